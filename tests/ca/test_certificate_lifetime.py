"""A certificate never outlives the configured maximum, its identity, nor the token that asked
for it; a token obtained with a certificate never outlives the certificate; a key revoked after
a certificate was issued ends the certificate's use for tokens."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ca_helpers import make_csr, new_key
from cryptography import x509
from fastapi.testclient import TestClient
from test_rfc8705_mtls import cc, svid_for, tls_client
from tests.conftest import ISSUER, bearer_headers

from tessera.container import Services
from tessera.oauth import rfc9068_access_token as at


def _csr_for(services: Services, identity_id: str) -> str:
    with services.sessions() as s:
        row = services.identities.get(s, identity_id)
        spiffe = services.identities.spiffe_id(row)
    return make_csr(new_key(), uris=[spiffe])


def test_a_ttl_over_the_maximum_is_refused(ca_services: Services, app_client: TestClient,
                                           make_identity: Callable[..., Any]) -> None:
    agent = make_identity("ttl-agent")
    assert ca_services.settings.ca.max_svid_ttl == 3600  # the documented default
    r = app_client.post("/v1/ca/certificates", headers=bearer_headers(app_client, agent),
                        json={"csr": _csr_for(ca_services, agent.id), "ttl": 86400})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "ttl_out_of_range"


def test_a_certificate_never_outlives_the_token_that_asked(
        ca_services: Services, app_client: TestClient,
        make_identity: Callable[..., Any]) -> None:
    agent = make_identity("short-token-agent")
    now = ca_services.clock.now()
    token = at.issue(ca_services.keys.signer(), issuer=ISSUER, subject=agent.id,
                     client_id=agent.id, audience=ISSUER, scope=None, now=now, ttl=300).token
    r = app_client.post("/v1/ca/certificates", headers={"Authorization": f"Bearer {token}"},
                        json={"csr": _csr_for(ca_services, agent.id)})
    assert r.status_code == 201, r.text
    not_after = datetime.fromisoformat(r.json()["not_after"])
    assert not_after <= now + timedelta(seconds=300)
    # Without the short token, the default lifetime (1 h) is the bound.
    r = app_client.post("/v1/ca/certificates", headers=bearer_headers(app_client, agent),
                        json={"csr": _csr_for(ca_services, agent.id)})
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["not_after"]) <= now + timedelta(hours=1)


def test_a_token_never_outlives_the_certificate_it_was_obtained_with(
        ca_services: Services, make_identity: Callable[..., Any]) -> None:
    agent = make_identity("cert-bound-agent", token_ttl=3600)
    with ca_services.sessions() as s:
        issued = ca_services.ca.issue(s, agent.id, make_csr(new_key()), actor="test", ttl=120)
        s.commit()
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=cc(agent.id))
    assert resp.status_code == 200, resp.text
    claims = ca_services.tokens.authenticate_bearer(resp.json()["access_token"])
    assert claims["exp"] <= cert.not_valid_after_utc.timestamp()
    assert resp.json()["expires_in"] <= 120


def test_a_key_revoked_after_the_certificate_ends_its_use(
        ca_services: Services, make_identity: Callable[..., Any]) -> None:
    agent = make_identity("compromised-agent")
    cert = svid_for(ca_services, agent.id)
    with ca_services.sessions() as s:
        (cred,) = ca_services.identities.credentials(s, agent.id)
        ca_services.identities.revoke_credential(s, agent.id, cred.id, actor="test")
        s.commit()
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=cc(agent.id))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"
    assert datetime.now(UTC) < cert.not_valid_after_utc  # refused, though still valid


def test_introspection_calls_a_certificate_bound_token_bearer(
        ca_services: Services, app_client: TestClient,
        make_identity: Callable[..., Any]) -> None:
    """RFC 8705 §3: presented as Bearer; RFC 7662 token_type says so, with the binding."""
    from oauth_helpers import introspect

    agent = make_identity("mtls-introspected")
    rs = make_identity("resource-server")
    cert = svid_for(ca_services, agent.id)
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=cc(agent.id))
    assert resp.status_code == 200, resp.text
    body = introspect(app_client, rs, resp.json()["access_token"])
    assert body["active"] is True and body["token_type"] == "Bearer"
    assert "x5t#S256" in body["cnf"]

"""RFC 8705: mutual-TLS client authentication and certificate-bound tokens (in process).

The ASGI TLS extension is what `tessera serve --tls-*` puts in the scope; here it is added by
the same wrapper the server uses, around the in-process app.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from ca_helpers import foreign_ca_cert, make_csr, new_key, self_signed_cert
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey

from tessera.api.app import create_app
from tessera.api.tls import _WithTLS
from tessera.container import Services
from tessera.identity.schemas import CredentialCreate
from tessera.sdk.mtls import (
    CertificateBindingError,
    CertificateRenewer,
    certificate_thumbprint,
    check_certificate_binding,
)

ISSUER = "http://tessera.test"


@contextmanager
def tls_client(services: Services, cert: x509.Certificate | None) -> Iterator[TestClient]:
    chain = [ssl.DER_cert_to_PEM_cert(cert.public_bytes(serialization.Encoding.DER))] \
        if cert is not None else []
    app = _WithTLS(create_app(services=services, run_jobs=False),
                   {"client_cert_chain": chain})
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def svid_for(services: Services, identity_id: str) -> x509.Certificate:
    with services.sessions() as s:
        issued = services.ca.issue(s, identity_id, make_csr(new_key()), actor="test")
        s.commit()
    return x509.load_pem_x509_certificate(issued.cert_pem.encode())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cc(client_id: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id}


def test_tls_client_auth_issues_certificate_bound_token(ca_services: Services,
                                                        make_identity: Callable[..., Any]
                                                        ) -> None:
    agent = make_identity("mtls-agent")
    cert = svid_for(ca_services, agent.id)
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=cc(agent.id))
    assert resp.status_code == 200, resp.text
    claims = ca_services.tokens.authenticate_bearer(resp.json()["access_token"])
    assert claims["sub"] == agent.id
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(der(cert))}
    check_certificate_binding(claims, der(cert))
    with ca_services.sessions() as s:
        event = ca_services.audit.events(s, type="oauth.token.issued")[-1]
    assert event.data["method"] == "tls_client_auth"


def test_private_key_jwt_over_mtls_is_also_bound(ca_services: Services,
                                                 make_identity: Callable[..., Any]) -> None:
    agent = make_identity("jwt-over-mtls")
    cert = svid_for(ca_services, agent.id)
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=agent.form())
    claims = ca_services.tokens.authenticate_bearer(resp.json()["access_token"])
    assert claims["cnf"]["x5t#S256"] == certificate_thumbprint(der(cert))


@pytest.mark.parametrize("case", ["foreign_ca", "other_identity", "no_client_id",
                                  "suspended", "self_signed_unregistered"])
def test_tls_client_auth_refusals(ca_services: Services, make_identity: Callable[..., Any],
                                  case: str) -> None:
    agent = make_identity("refused-agent")
    other = make_identity("other-agent")
    form = cc(agent.id)
    if case == "foreign_ca":
        cert = foreign_ca_cert("spiffe://example.org/agent/refused-agent", new_key())
    elif case == "other_identity":
        cert = svid_for(ca_services, other.id)
    elif case == "no_client_id":
        cert = svid_for(ca_services, agent.id)
        form = {"grant_type": "client_credentials"}
    elif case == "suspended":
        cert = svid_for(ca_services, agent.id)
        with ca_services.sessions() as s:
            ca_services.identities.suspend(s, agent.id, actor="test")
            s.commit()
    else:
        cert = self_signed_cert(new_key())
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=form)
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid_client",
                           "error_description": "client authentication failed"}


def test_self_signed_tls_client_auth_with_registered_key(ca_services: Services,
                                                         make_identity: Callable[..., Any]
                                                         ) -> None:
    agent = make_identity("self-signer")
    key = new_key()
    with ca_services.sessions() as s:
        ca_services.identities.add_credential(s, agent.id, CredentialCreate(
            jwk=ECKey.import_key(key.public_key()).as_dict(private=False)), actor="test")
        s.commit()
    cert = self_signed_cert(key)
    with tls_client(ca_services, cert) as client:
        resp = client.post("/oauth2/token", data=cc(agent.id))
    assert resp.status_code == 200, resp.text
    claims = ca_services.tokens.authenticate_bearer(resp.json()["access_token"])
    assert claims["cnf"]["x5t#S256"] == certificate_thumbprint(der(cert))


def test_bound_token_refused_over_connection_with_other_certificate(
        ca_services: Services, make_identity: Callable[..., Any]) -> None:
    agent = make_identity("bound-agent")
    cert = svid_for(ca_services, agent.id)
    other_cert = svid_for(ca_services, agent.id)  # same identity, another certificate
    with tls_client(ca_services, cert) as client:
        token = client.post("/oauth2/token", data=cc(agent.id)).json()["access_token"]
        ok = client.post("/v1/ca/certificates", headers={"Authorization": f"Bearer {token}"},
                         json={"csr": make_csr(new_key())})
        assert ok.status_code == 201
    for presented in (other_cert, None):
        with tls_client(ca_services, presented) as client:
            resp = client.post("/v1/ca/certificates",
                               headers={"Authorization": f"Bearer {token}"},
                               json={"csr": make_csr(new_key())})
        assert resp.status_code == 401
    claims = ca_services.tokens.authenticate_bearer(token)
    with pytest.raises(CertificateBindingError):
        check_certificate_binding(claims, der(other_cert))
    with pytest.raises(CertificateBindingError):
        check_certificate_binding(claims, None)


def test_sdk_binding_check_for_unbound_tokens() -> None:
    check_certificate_binding({"sub": "x"}, None)
    with pytest.raises(CertificateBindingError):
        check_certificate_binding({"sub": "x"}, None, require_binding=True)


def test_renewer_renews_after_half_the_lifetime(ca_services: Services,
                                                make_identity: Callable[..., Any]) -> None:
    agent = make_identity("renewing")
    requests: list[str] = []

    def request(csr: str) -> dict[str, Any]:
        requests.append(csr)
        with ca_services.sessions() as s:
            issued = ca_services.ca.issue(s, agent.id, csr, actor=agent.id)
            s.commit()
        return {"certificate": issued.cert_pem, "chain": issued.chain_pem, "bundle": ""}

    now = [time.time()]
    renewer = CertificateRenewer(request, now=lambda: now[0])
    first = renewer.current()
    assert renewer.current() is first and len(requests) == 1
    now[0] = first.renew_at - 1
    assert renewer.current() is first
    now[0] = first.renew_at + 1
    second = renewer.current()
    assert second is not first and len(requests) == 2
    assert second.key_pem != first.key_pem  # a fresh key each time


def test_bound_admin_token_refused_on_management_api_without_its_certificate(
        ca_services: Services, make_identity: Callable[..., Any]) -> None:
    admin = make_identity("bound-admin", kind="human", roles=("admin",))
    cert = svid_for(ca_services, admin.id)
    with tls_client(ca_services, cert) as client:
        token = client.post("/oauth2/token", data=admin.form()).json()["access_token"]
        assert client.get("/v1/identities", headers={
            "Authorization": f"Bearer {token}"}).status_code == 200
    with tls_client(ca_services, None) as client:
        resp = client.get("/v1/identities", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401

"""RFC 7523 §2.1 JWT bearer grant with federated tokens, end to end over the token endpoint."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient
from joserfc.jwk import RSAKey

from tessera.container import Services
from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE

ISSUER = "http://tessera.test"


def _setup(app_client: TestClient, admin_headers: dict[str, str], oidc_issuer: Any) -> None:
    resp = app_client.post("/v1/federation/issuers", headers=admin_headers, json={
        "name": "k8s", "issuer": oidc_issuer.url, "audiences": ["tessera"],
        "rules": [{"match": {"sub": "system:serviceaccount:ml:trainer"},
                   "identity": "pipeline/trainer"}]})
    assert resp.status_code == 201, resp.text


def test_federated_token_buys_a_tessera_access_token(fed_services: Services,
                                                     app_client: TestClient,
                                                     admin_headers: dict[str, str],
                                                     oidc_issuer: Any,
                                                     make_identity: Any) -> None:
    trainer = make_identity("trainer", kind="pipeline", allowed_scopes=["train"])
    _setup(app_client, admin_headers, oidc_issuer)
    platform_token = oidc_issuer.token()
    resp = app_client.post("/oauth2/token", data={"grant_type": GRANT_TYPE,
                                                  "assertion": platform_token,
                                                  "scope": "train"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "train"
    claims = fed_services.tokens.authenticate_bearer(body["access_token"])
    assert claims["sub"] == trainer.id and claims["client_id"] == trainer.id
    # Never outlives the platform token.
    assert claims["exp"] <= int(time.time()) + 600 + 1
    with fed_services.sessions() as s:
        issued = [e for e in fed_services.audit.events(s, type="oauth.token.issued")
                  if e.subject == trainer.id]
        assert issued[-1].data["method"] == "federated"
        assert issued[-1].data["issuer"] == oidc_issuer.url
        assert platform_token not in str(issued[-1].data)


def test_refusals_are_uniform_invalid_grant_and_audited(fed_services: Services,
                                                        app_client: TestClient,
                                                        admin_headers: dict[str, str],
                                                        oidc_issuer: Any,
                                                        make_identity: Any) -> None:
    make_identity("trainer", kind="pipeline")
    _setup(app_client, admin_headers, oidc_issuer)
    forged = oidc_issuer.token(key=RSAKey.generate_key(2048, private=True,
                                                       parameters={"kid": "k1"}))
    bodies = []
    for assertion in (forged, oidc_issuer.token(aud="other"),
                      oidc_issuer.token(sub="system:serviceaccount:ml:nobody")):
        resp = app_client.post("/oauth2/token", data={"grant_type": GRANT_TYPE,
                                                      "assertion": assertion})
        assert resp.status_code == 400
        bodies.append(resp.json())
    assert all(b == {"error": "invalid_grant",
                     "error_description": "the assertion is not accepted"} for b in bodies)
    with fed_services.sessions() as s:
        reasons = [e.reasons[0] for e in fed_services.audit.events(s, type="oauth.token.refused")]
    assert any("signature" in r for r in reasons)
    assert any("aud" in r for r in reasons)
    assert any("no mapping rule" in r for r in reasons)


def test_missing_assertion_is_invalid_request(fed_services: Services,
                                              app_client: TestClient) -> None:
    resp = app_client.post("/oauth2/token", data={"grant_type": GRANT_TYPE})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


def test_issuer_admin_api_requires_admin_and_validates(fed_services: Services,
                                                       app_client: TestClient,
                                                       admin_headers: dict[str, str],
                                                       oidc_issuer: Any,
                                                       make_identity: Any) -> None:
    agent = make_identity(kind="agent")
    token = app_client.post("/oauth2/token", data=agent.form()).json()["access_token"]
    resp = app_client.get("/v1/federation/issuers", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 403
    bad = app_client.post("/v1/federation/issuers", headers=admin_headers, json={
        "name": "x", "issuer": "ftp://example.org", "audiences": ["a"]})
    assert bad.status_code == 422
    _setup(app_client, admin_headers, oidc_issuer)
    dup = app_client.post("/v1/federation/issuers", headers=admin_headers, json={
        "name": "k8s", "issuer": oidc_issuer.url, "audiences": ["a"]})
    assert dup.status_code == 409
    listed = app_client.get("/v1/federation/issuers", headers=admin_headers).json()
    assert [i["name"] for i in listed["items"]] == ["k8s"]
    patched = app_client.patch("/v1/federation/issuers/k8s", headers=admin_headers,
                               json={"audiences": ["tessera", "other"]})
    assert patched.status_code == 200 and patched.json()["audiences"] == ["tessera", "other"]
    assert app_client.delete("/v1/federation/issuers/k8s",
                             headers=admin_headers).status_code == 204
    assert app_client.get("/v1/federation/issuers/k8s", headers=admin_headers).status_code == 404

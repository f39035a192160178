"""Every route that accepts a Tessera access token goes through one gate.

The routes come from the application's own route table, so a route added later is covered
without a line here: it is either public (listed below, with why) or it must refuse every bad
token state with 401. Each bad token is held by an admin, so nothing but the gate can refuse it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from tests.conftest import ISSUER, Actor, bearer_headers

from oauth_helpers import proof, revoke
from tessera.container import Services
from tessera.identity import ADMIN_ROLE
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.rfc8705_mtls import confirmation

# Routes that take no Tessera access token: client authentication of their own (RFC 6749
# §2.3 at the token, introspection and revocation endpoints), or public documents.
PUBLIC = {
    ("POST", "/oauth2/token"), ("POST", "/oauth2/introspect"), ("POST", "/oauth2/revoke"),
    ("GET", "/oauth2/jwks"), ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/authzen-configuration"), ("GET", "/.well-known/spiffe-bundle"),
    ("GET", "/v1/ca/bundle"), ("GET", "/healthz"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
}


def _walk(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # an included router
            yield from _walk(inner.routes)
        else:
            yield route


def route_table(app: Any) -> list[tuple[str, str]]:
    seen = {(method, route.path) for route in _walk(app.routes)
            for method in getattr(route, "methods", None) or () if method != "HEAD"}
    return sorted(seen)


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    url = re.sub(r"\{[^}]+\}", "x", path)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, url, headers=headers, json=body)


def mint(services: Services, *, subject: str, client_id: str, audience: str = ISSUER,
         offset: int = 0, ttl: int = 600, extra: dict[str, Any] | None = None) -> str:
    """A token signed by Tessera's own key: states the endpoint would never issue."""
    now = services.clock.now() + timedelta(seconds=offset)
    return at.issue(services.keys.signer(), issuer=ISSUER, subject=subject,
                    client_id=client_id, audience=audience, scope=None, now=now, ttl=ttl,
                    extra=extra).token


@pytest.fixture
def bad_tokens(app_client: TestClient, services: Services, make_identity: Callable[..., Actor]
               ) -> dict[str, dict[str, str]]:
    """Authorization headers, one per bad token state, each held by its own admin."""
    def admin() -> Actor:
        return make_identity(f"adm-{secrets.token_hex(3)}", kind="human", roles=(ADMIN_ROLE,))

    def raw(actor: Actor) -> str:
        return bearer_headers(app_client, actor)["Authorization"].split()[1]

    out: dict[str, dict[str, str]] = {"none": {}, "garbage": {"Authorization": "Bearer abc"}}

    a = admin()
    tok = raw(a)
    assert revoke(app_client, a, tok).status_code == 200
    out["revoked"] = {"Authorization": f"Bearer {tok}"}

    a = admin()
    tok = raw(a)
    with services.sessions() as s:
        (cred,) = services.identities.credentials(s, a.id)
        services.identities.revoke_credential(s, a.id, cred.id, actor="test")
        s.commit()
    out["key_revoked"] = {"Authorization": f"Bearer {tok}"}

    a = admin()
    tok = raw(a)
    with services.sessions() as s:
        services.identities.suspend(s, a.id, actor="test")
        s.commit()
    out["subject_suspended"] = {"Authorization": f"Bearer {tok}"}

    a = admin()
    tok = raw(a)
    with services.sessions() as s:
        services.identities.suspend(s, a.id, actor="test")
        s.commit()
        services.identities.resume(s, a.id, actor="test")
        s.commit()
    out["suspended_then_resumed"] = {"Authorization": f"Bearer {tok}"}

    # A delegated token: the admin is the subject, agent `outer` acts for agent `inner`,
    # which acts for the admin; `inner` is suspended.
    a, outer, inner = admin(), make_identity(), make_identity()
    with services.sessions() as s:
        services.identities.suspend(s, inner.id, actor="test")
        s.commit()
    act = {"sub": outer.id, "client_id": outer.id, "act": {"sub": inner.id,
                                                           "client_id": inner.id}}
    out["inner_actor_suspended"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=outer.id, extra={"act": act})}
    out["actor_without_client"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=outer.id, extra={"act": {"sub": "someone"}})}

    a = admin()
    out["expired"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=a.id, offset=-3600, ttl=60)}
    out["not_yet_valid"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=a.id, offset=3600)}
    out["other_audience"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=a.id, audience="https://api.example.com")}
    out["unknown_subject"] = {"Authorization": "Bearer " + mint(
        services, subject="id_nobody", client_id=a.id)}
    key = ECKey.generate_key("P-256", private=True)
    dpop_bound = mint(services, subject=a.id, client_id=a.id,
                      extra={"cnf": {"jkt": key.thumbprint()}})
    out["dpop_bound_as_bearer"] = {"Authorization": f"Bearer {dpop_bound}"}
    out["dpop_bound_without_proof"] = {"Authorization": f"DPoP {dpop_bound}"}
    out["dpop_proof_of_other_key"] = {
        "Authorization": f"DPoP {dpop_bound}",
        "DPoP": proof(ECKey.generate_key("P-256", private=True), "GET", ISSUER,
                      access_token=dpop_bound)}
    out["bearer_as_dpop"] = {"Authorization": f"DPoP {raw(a)}",
                             "DPoP": proof(key, "GET", ISSUER)}
    out["certificate_bound_without_certificate"] = {"Authorization": "Bearer " + mint(
        services, subject=a.id, client_id=a.id,
        extra={"cnf": confirmation(b"some certificate's DER")})}
    stranger = ECKey.generate_key("P-256", private=True)
    from joserfc import jwt
    forged = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": "unknown"},
                        {"iss": ISSUER, "sub": a.id, "client_id": a.id, "aud": ISSUER,
                         "iat": 0, "exp": 2**31, "jti": "j"}, stranger)
    out["unknown_kid"] = {"Authorization": f"Bearer {forged}"}
    return out


def test_every_route_refuses_every_bad_token(app_client: TestClient, admin_headers:
                                             dict[str, str],
                                             bad_tokens: dict[str, dict[str, str]]) -> None:
    routes = [r for r in route_table(app_client.app) if r not in PUBLIC]
    assert len(routes) > 70  # the table was read, not an empty list
    assert ("POST", "/v1/ca/certificates") in routes
    assert ("POST", "/access/v1/evaluation") in routes
    failures = []
    for state, headers in bad_tokens.items():
        for method, path in routes:
            resp = call(app_client, method, path, headers)
            if resp.status_code != 401:
                failures.append(f"{state}: {method} {path} -> {resp.status_code}")
            elif "www-authenticate" not in resp.headers:
                failures.append(f"{state}: {method} {path} -> 401 without a challenge")
    assert not failures, "\n".join(failures)
    # The control: the same routes with a good admin token get past the gate.
    passed = [(m, p) for m, p in routes
              if call(app_client, m, p, admin_headers).status_code != 401]
    assert passed == routes


POLICY = 'permit (principal, action == Action::"read", resource is Dataset);'


def test_a_dpop_bound_token_works_on_every_kind_of_route(
        app_client: TestClient, services: Services, make_identity: Callable[..., Actor]) -> None:
    """Management, self-service (access requests, secrets, CA) and the decision API."""
    key = ECKey.generate_key("P-256", private=True)
    who = make_identity("dpop-admin", kind="human", roles=(ADMIN_ROLE, "authz-client"),
                        dpop_required=True)
    from oauth_helpers import token
    resp = token(app_client, who, dpop=proof(key))
    assert resp.status_code == 200, resp.text
    tok = resp.json()["access_token"]
    for method, path in [("GET", "/v1/identities"), ("GET", "/v1/access-requests"),
                         ("GET", "/v1/approvals"), ("GET", "/v1/secrets/leases"),
                         ("GET", "/v1/ca/certificates"), ("GET", "/v1/access-roles")]:
        headers = {"Authorization": f"DPoP {tok}",
                   "DPoP": proof(key, method, f"{ISSUER}{path}", access_token=tok)}
        r = app_client.request(method, path, headers=headers)
        assert r.status_code == 200, (path, r.text)
    path = "/v1/policies/default"
    r = app_client.post(path, json={"files": {"p.cedar": POLICY}}, headers={
        "Authorization": f"DPoP {tok}",
        "DPoP": proof(key, "POST", f"{ISSUER}{path}", access_token=tok)})
    assert r.status_code == 201, r.text
    path = "/access/v1/evaluation"
    headers = {"Authorization": f"DPoP {tok}",
               "DPoP": proof(key, "POST", f"{ISSUER}{path}", access_token=tok)}
    r = app_client.post(path, headers=headers, json={
        "subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
        "resource": {"type": "Dataset", "id": "d"}})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["decision"], bool)  # past the gate, decided
    # The proof is single-use: the same headers again are refused.
    assert app_client.post(path, headers=headers, json={}).status_code == 401


def test_dpop_nonce_challenge_on_the_api(app_client: TestClient, services: Services,
                                         make_identity: Callable[..., Actor]) -> None:
    """With server nonces on, a proof without one gets 401 with a nonce to retry with."""
    services.lifecycle.settings = services.lifecycle.settings.model_copy(
        update={"dpop_nonce": True})
    key = ECKey.generate_key("P-256", private=True)
    who = make_identity("dpop-n", kind="human", roles=(ADMIN_ROLE,))
    from oauth_helpers import token
    first = token(app_client, who, dpop=proof(key))
    nonce = first.headers["DPoP-Nonce"]
    resp = token(app_client, who, dpop=proof(key, nonce=nonce))
    assert resp.status_code == 200, resp.text
    tok = resp.json()["access_token"]
    url = f"{ISSUER}/v1/identities"
    r = app_client.get("/v1/identities", headers={
        "Authorization": f"DPoP {tok}", "DPoP": proof(key, "GET", url, access_token=tok)})
    assert r.status_code == 401
    assert 'error="use_dpop_nonce"' in r.headers["www-authenticate"]
    retry = app_client.get("/v1/identities", headers={
        "Authorization": f"DPoP {tok}",
        "DPoP": proof(key, "GET", url, access_token=tok, nonce=r.headers["DPoP-Nonce"])})
    assert retry.status_code == 200, retry.text

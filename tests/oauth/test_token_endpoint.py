"""/oauth2/token: client_credentials with private_key_jwt (RFC 6749 §4.4, RFC 7523 §2.2)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet
from tests.conftest import ASSERTION_TYPE, ISSUER, TOKEN_ENDPOINT, Actor, make_services

from tessera.clock import FakeClock
from tessera.container import Services
from tessera.identity.schemas import IdentityUpdate


def b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def refused(resp: Any, error: str = "invalid_client") -> None:
    assert resp.status_code == (401 if error == "invalid_client" else 400), resp.text
    body = resp.json()
    assert body["error"] == error
    assert "access_token" not in body


@pytest.fixture
def agent(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity("summariser", allowed_scopes=["read", "write"],
                         allowed_audiences=["https://api.example.com"])


def test_issues_rfc9068_token(app_client: TestClient, agent: Actor, services: Services) -> None:
    resp = app_client.post("/oauth2/token", data={**agent.form(), "scope": "read"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["scope"] == "read"
    jwks = app_client.get("/oauth2/jwks").json()
    token = jwt.decode(body["access_token"], KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert token.header["typ"] == "at+jwt" and token.header["kid"]
    claims = token.claims
    assert claims["iss"] == ISSUER and claims["sub"] == agent.id
    assert claims["client_id"] == agent.id and claims["aud"] == ISSUER
    assert claims["exp"] - claims["iat"] == 900 and claims["scope"] == "read"
    assert len(claims["jti"]) >= 16
    with services.sessions() as s:
        event = services.audit.events(s, type="oauth.token.issued")[-1]
        assert event.subject == agent.id and event.data["jti"] == claims["jti"]
        assert event.data["method"] == "private_key_jwt"
        assert services.identities.credentials(s, agent.id)[0].last_used_at is not None


def test_without_scope_grants_allowed_scopes(app_client: TestClient, agent: Actor) -> None:
    assert app_client.post("/oauth2/token", data=agent.form()).json()["scope"] == "read write"


def test_resource_indicator_sets_audience(app_client: TestClient, agent: Actor) -> None:
    resp = app_client.post("/oauth2/token", data={**agent.form(),
                                                  "resource": "https://api.example.com"})
    token = resp.json()["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == "https://api.example.com"


def test_lifetime_never_outlives_the_identity(app_client: TestClient, agent: Actor,
                                              services: Services, clock: FakeClock) -> None:
    with services.sessions() as s:
        services.identities.update(s, agent.id, IdentityUpdate(
            expires_at=clock.now() + timedelta(seconds=120)), actor="t")
        s.commit()
    assert app_client.post("/oauth2/token", data=agent.form()).json()["expires_in"] <= 120


def test_assertion_audience_may_be_the_issuer(app_client: TestClient, agent: Actor) -> None:
    assert app_client.post("/oauth2/token", data=agent.form(aud=ISSUER)).status_code == 200
    assert app_client.post("/oauth2/token", data=agent.form(
        aud=["https://other", TOKEN_ENDPOINT])).status_code == 200


def _hs256_with_public_key(agent: Actor) -> str:
    pem = agent.key.as_pem(private=False)
    now = int(time.time())
    claims = {"iss": agent.id, "sub": agent.id, "aud": TOKEN_ENDPOINT, "iat": now,
              "exp": now + 60, "jti": "hs"}
    # joserfc refuses to build this key, so the attacker's token is made by hand.
    signing_input = f"{b64({'alg': 'HS256', 'kid': agent.kid})}.{b64(claims)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _alg_none(agent: Actor) -> str:
    now = int(time.time())
    claims = {"iss": agent.id, "sub": agent.id, "aud": TOKEN_ENDPOINT, "iat": now,
              "exp": now + 60, "jti": "none"}
    return f"{b64({'alg': 'none', 'kid': agent.kid})}.{b64(claims)}."


def _embedded_jwk(agent: Actor) -> str:
    attacker = ECKey.generate_key("P-256", private=True)
    now = int(time.time())
    claims = {"iss": agent.id, "sub": agent.id, "aud": TOKEN_ENDPOINT, "iat": now,
              "exp": now + 60, "jti": "embedded"}
    return jwt.encode({"alg": "ES256", "jwk": attacker.as_dict(private=False)}, claims, attacker)


def _signed_header(agent: Actor, **header: Any) -> str:
    """A correctly signed assertion under a header that must be refused (made by hand: joserfc
    refuses to sign these headers). The signature is valid, so only the header rules stop it."""
    now = int(time.time())
    claims = {"iss": agent.id, "sub": agent.id, "aud": TOKEN_ENDPOINT, "iat": now,
              "exp": now + 60, "jti": f"hdr-{secrets.token_hex(4)}"}
    signing_input = f"{b64({'alg': 'ES256', 'kid': agent.kid, **header})}.{b64(claims)}"
    sig = jws.JWSRegistry.algorithms["ES256"].sign(signing_input.encode(), agent.key)
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


# An object (so "not an object" cannot be what refuses it) nesting 3000 lists deep:
# json.loads raised RecursionError on such a payload (a 500).
_DEEP = base64.urlsafe_b64encode(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}").rstrip(
    b"=").decode()


ATTACKS: dict[str, Callable[[Actor], str]] = {
    "rejects alg none": _alg_none,
    "rejects HS256 signed with the public key": _hs256_with_public_key,
    "rejects a key embedded in the header": _embedded_jwk,
    "rejects a certificate chain in the header": lambda a: a.assertion(
        _header={"x5c": ["MIIB"]}),
    "rejects wrong aud": lambda a: a.assertion(aud="https://elsewhere.example"),
    "rejects expired": lambda a: a.assertion(exp=int(time.time()) - 1,
                                             iat=int(time.time()) - 61),
    "rejects iat in the future": lambda a: a.assertion(iat=int(time.time()) + 600,
                                                       exp=int(time.time()) + 660),
    "rejects missing jti": lambda a: a.assertion(jti=None),
    "rejects missing exp": lambda a: a.assertion(exp=None),
    "rejects lifetime over 5 minutes": lambda a: a.assertion(exp=int(time.time()) + 301),
    "rejects nbf in the future": lambda a: a.assertion(nbf=int(time.time()) + 600),
    "rejects iss different from sub": lambda a: a.assertion(sub="someone-else"),
    "rejects unknown client": lambda a: a.assertion(iss="idn_unknown", sub="idn_unknown"),
    "rejects signature by another key": lambda a: a.assertion(
        _key=ECKey.generate_key("P-256", private=True)),
    "rejects unknown kid": lambda a: a.assertion(_header={"kid": "not-a-kid"}),
    "rejects garbage": lambda a: "not.a.jwt",
    "rejects non-JSON payload": lambda a: f"{b64({'alg': 'ES256'})}.bm90IGpzb24.c2ln",
    "rejects string exp": lambda a: a.assertion(exp="soon"),
    "rejects infinite exp": lambda a: a.assertion(exp=float("inf")),
    "rejects NaN iat": lambda a: a.assertion(iat=float("nan")),
    # Header rules (RFC 7515 §4.1), each under a valid signature.
    "rejects crit": lambda a: _signed_header(a, crit=["exp"], exp=1),
    "rejects b64 false with crit": lambda a: _signed_header(a, crit=["b64"], b64=False),
    "rejects b64 false": lambda a: _signed_header(a, b64=False),
    "rejects a non-string typ": lambda a: _signed_header(a, typ=1),
    "rejects a non-string kid": lambda a: _signed_header(a, kid=[a.kid]),
    "rejects an unregistered header member": lambda a: _signed_header(a, zip="DEF"),
    "rejects a list alg": lambda a: _signed_header(a, alg=["ES256"]),
    "rejects deeply nested JSON": lambda a: f"{b64({'alg': 'ES256'})}.{_DEEP}.c2ln",
}


@pytest.mark.parametrize("case", list(ATTACKS))
def test_assertion_attacks(app_client: TestClient, agent: Actor, services: Services,
                           case: str) -> None:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": ATTACKS[case](agent)}
    refused(app_client.post("/oauth2/token", data=form))
    with services.sessions() as s:
        refusal = services.audit.events(s, type="oauth.token.refused")
        assert refusal and refusal[-1].outcome == "failure"
        assert services.audit.events(s, type="oauth.token.issued") == []


def test_replayed_jti_is_refused(app_client: TestClient, agent: Actor) -> None:
    form = agent.form()
    assert app_client.post("/oauth2/token", data=form).status_code == 200
    refused(app_client.post("/oauth2/token", data=form))


def test_replay_refused_across_nodes_and_restarts(services: Services, agent: Actor,
                                                  settings: Any, clock: FakeClock,
                                                  master_key: bytes) -> None:
    from tessera.audit import RequestContext

    form = agent.form()
    with services.sessions() as s:
        services.tokens.token(s, form, [], RequestContext())
        s.commit()
    other = make_services(settings.model_copy(update={"node_id": "node-b"}), clock, master_key)
    try:
        with other.sessions() as s:
            with pytest.raises(Exception) as info:
                other.tokens.token(s, form, [], RequestContext())
            assert getattr(info.value, "error", None) == "invalid_client"
    finally:
        other.close()


def test_signed_by_another_identitys_key(app_client: TestClient, agent: Actor,
                                         make_identity: Callable[..., Actor]) -> None:
    other = make_identity("other-agent")
    refused(app_client.post("/oauth2/token", data=agent.form(_key=other.key,
                                                             _header={"kid": other.kid})))
    refused(app_client.post("/oauth2/token", data=agent.form(_key=other.key,
                                                             _header={"kid": None})))


def test_revoked_key_is_refused(app_client: TestClient, agent: Actor, services: Services) -> None:
    with services.sessions() as s:
        cred = services.identities.credentials(s, agent.id)[0]
        services.identities.revoke_credential(s, agent.id, cred.id, actor="t")
        s.commit()
    refused(app_client.post("/oauth2/token", data=agent.form()))


@pytest.mark.parametrize("change", ["suspend", "decommission"])
def test_inactive_identity_is_refused(app_client: TestClient, agent: Actor, services: Services,
                                      change: str) -> None:
    with services.sessions() as s:
        getattr(services.identities, change)(s, agent.id, actor="t")
        s.commit()
    refused(app_client.post("/oauth2/token", data=agent.form()))


def test_expired_identity_is_refused(app_client: TestClient, agent: Actor,
                                     clock: FakeClock) -> None:
    clock.advance(days=31)
    refused(app_client.post("/oauth2/token", data=agent.form()))


def test_refusals_all_look_the_same(app_client: TestClient, agent: Actor) -> None:
    bodies = {json.dumps(app_client.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": make(agent)}).json(), sort_keys=True)
        for make in ATTACKS.values()}
    assert len(bodies) == 1


@pytest.mark.parametrize("case, form, error", [
    ("rejects missing grant_type", {"grant_type": None}, "invalid_request"),
    ("rejects unsupported grant_type", {"grant_type": "password"}, "unsupported_grant_type"),
    ("rejects scope outside the allowed set", {"scope": "admin"}, "invalid_scope"),
    ("rejects malformed scope", {"scope": "a\"b"}, "invalid_scope"),
    ("rejects resource not allowed", {"resource": "https://evil.example"}, "invalid_target"),
    ("rejects relative resource", {"resource": "/relative"}, "invalid_target"),
    ("rejects wrong assertion type", {"client_assertion_type": "urn:x"}, "invalid_client"),
    ("rejects missing client authentication", {"client_assertion_type": None,
                                               "client_assertion": None}, "invalid_client"),
])
def test_request_errors(app_client: TestClient, agent: Actor, case: str,
                        form: dict[str, Any], error: str) -> None:
    data = agent.form()
    for k, v in form.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    refused(app_client.post("/oauth2/token", data=data), error)


def test_rejects_repeated_parameters(app_client: TestClient, agent: Actor) -> None:
    form = agent.form()
    body = "&".join(f"{k}={v}" for k, v in form.items()) + "&grant_type=client_credentials"
    resp = app_client.post("/oauth2/token", content=body,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    refused(resp, "invalid_request")


def test_rejects_json_body(app_client: TestClient, agent: Actor) -> None:
    refused(app_client.post("/oauth2/token", json=agent.form()), "invalid_request")


def test_rejects_oversize_body(app_client: TestClient) -> None:
    resp = app_client.post("/oauth2/token", content=b"a=" + b"x" * 70_000,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413


def test_metadata_and_jwks(app_client: TestClient, services: Services) -> None:
    meta = app_client.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == TOKEN_ENDPOINT
    assert "client_credentials" in meta["grant_types_supported"]
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    assert "none" not in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert not any(a.startswith("HS") for a in
                   meta["token_endpoint_auth_signing_alg_values_supported"])
    keys = app_client.get("/oauth2/jwks").json()["keys"]
    assert len(keys) == 1 and "d" not in keys[0] and keys[0]["alg"] == "ES256"


def test_payload_swapped_under_a_valid_signature_is_refused(
        app_client: TestClient, agent: Actor, make_identity: Callable[..., Actor]) -> None:
    """The claims are read once, from the payload the signature covers: a payload swapped in
    under another assertion's valid header and signature (naming another client, or the same
    client with a fresh jti) must not verify."""
    victim = make_identity("swap-victim")
    header, _, signature = agent.assertion().split(".")
    for claims_of in (victim.assertion(), agent.assertion()):
        payload = claims_of.split(".")[1]
        resp = app_client.post("/oauth2/token", data={
            **agent.form(), "client_assertion": f"{header}.{payload}.{signature}"})
        refused(resp)

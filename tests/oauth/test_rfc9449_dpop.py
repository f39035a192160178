"""DPoP (RFC 9449): proof validation, binding, nonces, and the attacks it must stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey
from tests.conftest import Actor

from oauth_helpers import TOKEN_URL, claims_of, introspect, proof, token, unsigned_proof
from tessera.container import Services
from tessera.oauth.rfc9449_dpop import (
    DPoPVerifier,
    HMACNonces,
    InvalidDPoPProof,
    UseDPoPNonce,
    ath_of,
    thumbprint,
)


class MemoryReplay:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def use_once(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        if (issuer, jti) in self.seen:
            return False
        self.seen.add((issuer, jti))
        return True


def verifier(nonces: HMACNonces | None = None) -> DPoPVerifier:
    return DPoPVerifier(MemoryReplay(), algs=["ES256", "EdDSA"], nonces=nonces)


def now() -> datetime:
    return datetime.now(UTC)


KEY = ECKey.generate_key("P-256", private=True)


def test_accepts_valid_proof_and_reports_thumbprint() -> None:
    result = verifier().verify(proof(KEY), method="POST", urls=[TOKEN_URL], now=now())
    assert result.jkt == thumbprint(KEY.as_dict(private=False)) == KEY.thumbprint()


def _private_jwk() -> dict:
    return KEY.as_dict(private=True)


CASES: dict[str, Callable[[], tuple[str, dict]]] = {
    "wrong htm": lambda: (proof(KEY, method="GET"), {}),
    "wrong htu": lambda: (proof(KEY, url="https://evil.example/oauth2/token"), {}),
    "private key inside the header": lambda: (proof(KEY, jwk=_private_jwk()), {}),
    "alg none": lambda: (unsigned_proof(), {}),
    "HS256": lambda: (jwt.encode({"typ": "dpop+jwt", "alg": "HS256",
                                  "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
                                 {"jti": "x", "htm": "POST", "htu": TOKEN_URL,
                                  "iat": int(time.time())},
                                 OctKey.import_key("secret-secret-secret-secret-32by"),
                                 algorithms=["HS256"]), {}),
    "wrong typ": lambda: (proof(KEY, typ="JWT"), {}),
    "stale iat": lambda: (proof(KEY, iat=int(time.time()) - 3600), {}),
    "future iat": lambda: (proof(KEY, iat=int(time.time()) + 3600), {}),
    "missing ath": lambda: (proof(KEY), {"access_token": "abc"}),
    "wrong ath": lambda: (proof(KEY, access_token="other"), {"access_token": "abc"}),
    "key other than cnf.jkt": lambda: (proof(ECKey.generate_key("P-256", private=True)),
                                       {"jkt": KEY.thumbprint()}),
    "signature by another key": lambda: (jwt.encode(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.as_dict(private=False)},
        {"jti": "y", "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())},
        ECKey.generate_key("P-256", private=True)), {}),
    "two proofs": lambda: (proof(KEY) + "," + proof(KEY), {}),
    "no proof": lambda: ("", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejects_proof(case: str) -> None:
    value, kwargs = CASES[case]()
    with pytest.raises(InvalidDPoPProof) as err:
        verifier().verify(value, method="POST", urls=[TOKEN_URL], now=now(), **kwargs)
    assert err.value.error == "invalid_dpop_proof"


def test_rejects_replayed_jti() -> None:
    v = verifier()
    value = proof(KEY)
    v.verify(value, method="POST", urls=[TOKEN_URL], now=now())
    with pytest.raises(InvalidDPoPProof):
        v.verify(value, method="POST", urls=[TOKEN_URL], now=now())


def test_htu_ignores_query_and_case_of_host() -> None:
    verifier().verify(proof(KEY, url="HTTP://Tessera.TEST/oauth2/token?x=1"), method="POST",
                      urls=[TOKEN_URL], now=now())


def test_ath_binds_proof_to_access_token() -> None:
    result = verifier().verify(proof(KEY, method="GET", url="https://rs/x", access_token="abc"),
                               method="GET", urls=["https://rs/x"], now=now(),
                               access_token="abc", jkt=KEY.thumbprint())
    assert result.claims["ath"] == ath_of("abc")


def test_nonce_required_then_accepted() -> None:
    nonces = HMACNonces(b"k" * 32, 300)
    v = verifier(nonces)
    with pytest.raises(UseDPoPNonce) as err:
        v.verify(proof(KEY), method="POST", urls=[TOKEN_URL], now=now())
    nonce = err.value.headers["DPoP-Nonce"]
    v.verify(proof(KEY, nonce=nonce), method="POST", urls=[TOKEN_URL], now=now())
    with pytest.raises(UseDPoPNonce):
        v.verify(proof(KEY, nonce=nonce[:-2] + "xx"), method="POST", urls=[TOKEN_URL],
                 now=now())


def test_nonce_expires_after_two_windows() -> None:
    nonces = HMACNonces(b"k" * 32, 300)
    t = now()
    nonce = nonces.current(t)
    assert nonces.valid(nonce, t)
    assert not nonces.valid(nonce, datetime.fromtimestamp(t.timestamp() + 601, UTC))


# -- end to end -------------------------------------------------------------------------------

def test_dpop_token_is_bound_to_proof_key(app_client: TestClient,
                                          make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"])
    resp = token(app_client, agent, dpop=proof(KEY))
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"
    claims = claims_of(resp.json()["access_token"])
    assert claims["cnf"] == {"jkt": KEY.thumbprint()}
    info = introspect(app_client, agent, resp.json()["access_token"])
    assert info["token_type"] == "DPoP" and info["cnf"]["jkt"] == KEY.thumbprint()


def test_rejects_replayed_proof_across_requests(app_client: TestClient,
                                                make_identity: Callable[..., Actor],
                                                services: Services) -> None:
    agent = make_identity()
    value = proof(KEY)
    assert token(app_client, agent, dpop=value).status_code == 200
    again = token(app_client, agent, dpop=value)
    assert again.status_code == 400 and again.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in again.json()


@pytest.mark.parametrize("bad", ["htm", "htu", "none", "private"])
def test_token_endpoint_rejects_bad_proof(bad: str, app_client: TestClient,
                                          make_identity: Callable[..., Actor]) -> None:
    agent = make_identity()
    value = {"htm": lambda: proof(KEY, method="GET"),
             "htu": lambda: proof(KEY, url="http://tessera.test/oauth2/other"),
             "none": lambda: unsigned_proof(),
             "private": lambda: proof(KEY, jwk=KEY.as_dict(private=True))}[bad]()
    resp = token(app_client, agent, dpop=value)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"
    assert "access_token" not in resp.json()


def test_identity_requiring_dpop_gets_no_bearer_token(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(dpop_required=True)
    resp = token(app_client, agent)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"
    assert token(app_client, agent, dpop=proof(KEY)).status_code == 200


def test_dpop_bound_token_presented_as_bearer_is_refused(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    from tessera.identity import ADMIN_ROLE
    admin = make_identity(kind="human", roles=(ADMIN_ROLE,))
    tok = token(app_client, admin, dpop=proof(KEY)).json()["access_token"]
    resp = app_client.get("/v1/identities", headers={"Authorization": f"Bearer {tok}"})
    assert resp.status_code == 401


def test_dpop_refresh_token_is_bound_to_the_key(app_client: TestClient,
                                                make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["offline_access"])
    rt = token(app_client, agent, dpop=proof(KEY)).json()["refresh_token"]
    other = ECKey.generate_key("P-256", private=True)
    resp = token(app_client, agent, grant_type="refresh_token", refresh_token=rt,
                 dpop=proof(other))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    resp = token(app_client, agent, grant_type="refresh_token", refresh_token=rt)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"
    ok = token(app_client, agent, grant_type="refresh_token", refresh_token=rt,
               dpop=proof(KEY))
    assert ok.status_code == 200 and ok.json()["token_type"] == "DPoP"
    assert claims_of(ok.json()["access_token"])["cnf"]["jkt"] == KEY.thumbprint()


def test_server_nonce_round_trip(app_client: TestClient, make_identity: Callable[..., Actor],
                                 services: Services) -> None:
    services.lifecycle.settings = services.lifecycle.settings.model_copy(
        update={"dpop_nonce": True})
    agent = make_identity()
    first = token(app_client, agent, dpop=proof(KEY))
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    ok = token(app_client, agent, dpop=proof(KEY, nonce=nonce))
    assert ok.status_code == 200, ok.text
    assert ok.headers.get("DPoP-Nonce")


def test_replayed_client_assertion_is_refused_on_every_backend(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    # The shared replay cache (used_jtis) must detect a second use on PostgreSQL too.
    from oauth_helpers import ASSERTION_TYPE
    agent = make_identity()
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": agent.assertion()}
    assert app_client.post("/oauth2/token", data=form).status_code == 200
    again = app_client.post("/oauth2/token", data=form)
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"


def test_management_api_accepts_dpop_with_valid_proof_only(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    from tessera.identity import ADMIN_ROLE
    admin = make_identity(kind="human", roles=(ADMIN_ROLE,))
    tok = token(app_client, admin, dpop=proof(KEY)).json()["access_token"]
    url = "http://tessera.test/v1/identities"
    good = proof(KEY, "GET", url, access_token=tok)
    headers = {"Authorization": f"DPoP {tok}", "DPoP": good}
    assert app_client.get("/v1/identities", headers=headers).status_code == 200
    # Replayed proof, proof without ath, proof by another key, no proof: all refused.
    other = ECKey.generate_key("P-256", private=True)
    for bad in (good, proof(KEY, "GET", url), proof(other, "GET", url, access_token=tok)):
        resp = app_client.get("/v1/identities", headers={"Authorization": f"DPoP {tok}",
                                                         "DPoP": bad})
        assert resp.status_code == 401
    assert app_client.get("/v1/identities",
                          headers={"Authorization": f"DPoP {tok}"}).status_code == 401

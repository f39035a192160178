"""The SDK against a real Tessera app: verify(), the ASGI middleware, the client and its Auth."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from tests.conftest import ISSUER, Actor

from oauth_helpers import proof, token
from tessera import sdk
from tessera.api.app import create_app
from tessera.container import Services
from tessera.sdk import (
    TesseraClient,
    TesseraMiddleware,
    TokenError,
    TokenVerificationError,
    Verifier,
)

RS = "https://rs.example.org"


def test_public_api_is_exactly_this() -> None:
    assert sorted(sdk.__all__) == ["MemoryReplayCache", "TesseraAuth", "TesseraClient",
                                   "TesseraMiddleware", "Token", "TokenError",
                                   "TokenVerificationError", "VerifiedToken", "Verifier"]
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_sdk_imports_no_server_code() -> None:
    code = ("import sys, tessera.sdk; bad = [m for m in sys.modules if m.startswith('tessera.')"
            " and not m.startswith('tessera.sdk')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for heavy in ("fastapi", "sqlalchemy", "starlette"):
        code = f"import sys, tessera.sdk; sys.exit(1 if '{heavy}' in sys.modules else 0)"
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0, heavy


@pytest.fixture
def agent(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity(allowed_scopes=["read", "offline_access"], allowed_audiences=[RS])


@pytest.fixture
def verifier(app_client: TestClient) -> Verifier:
    return Verifier(ISSUER, RS, http=app_client)


def sdk_client(app_client: TestClient, actor: Actor, **kwargs: Any) -> TesseraClient:
    kwargs.setdefault("resource", RS)
    kwargs.setdefault("scope", "read")
    return TesseraClient(ISSUER, actor.id, actor.key, kid=actor.kid, http=app_client, **kwargs)


def test_verify_bearer_token(app_client: TestClient, agent: Actor, verifier: Verifier) -> None:
    tok = token(app_client, agent, resource=RS, scope="read").json()["access_token"]
    result = verifier.verify(f"Bearer {tok}", method="GET", url=f"{RS}/x")
    assert result.subject == agent.id and result.has_scope("read")
    assert result.token_type == "Bearer" and result.actor is None


@pytest.mark.parametrize("case", ["wrong_audience", "expired", "garbage", "no_header",
                                  "other_issuer_key", "dpop_as_bearer"])
def test_verify_rejects(case: str, app_client: TestClient, agent: Actor,
                        verifier: Verifier) -> None:
    tok = token(app_client, agent, resource=RS).json()["access_token"]
    header: str | None = f"Bearer {tok}"
    if case == "wrong_audience":
        verifier = Verifier(ISSUER, "https://other.example.org", http=app_client)
    elif case == "expired":
        verifier = Verifier(ISSUER, RS, http=app_client, clock=lambda: time.time() + 3600)
    elif case == "garbage":
        header = "Bearer abc.def.ghi"
    elif case == "no_header":
        header = None
    elif case == "other_issuer_key":
        from joserfc import jwt
        forged = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": "forged"},
                            {"iss": ISSUER, "aud": RS, "sub": "x", "exp": time.time() + 60},
                            ECKey.generate_key("P-256", private=True))
        header = f"Bearer {forged}"
    elif case == "dpop_as_bearer":
        key = ECKey.generate_key("P-256", private=True)
        tok = token(app_client, agent, resource=RS, dpop=proof(key)).json()["access_token"]
        header = f"Bearer {tok}"
    with pytest.raises(TokenVerificationError) as err:
        verifier.verify(header, method="GET", url=f"{RS}/x")
    assert err.value.error in ("invalid_token", "invalid_request")
    assert err.value.status == 401


def test_verify_dpop_token_and_proof_attacks(app_client: TestClient, agent: Actor,
                                             verifier: Verifier) -> None:
    key = ECKey.generate_key("P-256", private=True)
    tok = token(app_client, agent, resource=RS, dpop=proof(key)).json()["access_token"]
    url = f"{RS}/data"
    good = proof(key, "GET", url, access_token=tok)
    result = verifier.verify(f"DPoP {tok}", method="GET", url=url, dpop=good)
    assert result.token_type == "DPoP"
    other = ECKey.generate_key("P-256", private=True)
    attacks = {
        "replay": good,
        "wrong key": proof(other, "GET", url, access_token=tok),
        "wrong htm": proof(key, "POST", url, access_token=tok),
        "wrong htu": proof(key, "GET", f"{RS}/other", access_token=tok),
        "no ath": proof(key, "GET", url),
        "private jwk": proof(key, "GET", url, access_token=tok,
                             jwk=key.as_dict(private=True)),
        "missing": None,
    }
    for name, value in attacks.items():
        with pytest.raises(TokenVerificationError) as err:
            verifier.verify(f"DPoP {tok}", method="GET", url=url, dpop=value)
        assert err.value.error == "invalid_dpop_proof", name


def test_jwks_refetched_on_unknown_kid_but_rate_limited(app_client: TestClient, agent: Actor,
                                                        services: Services,
                                                        admin_headers: dict) -> None:
    now = [time.time()]
    verifier = Verifier(ISSUER, RS, http=app_client, clock=lambda: now[0],
                        min_refetch_interval=30)
    tok = token(app_client, agent, resource=RS).json()["access_token"]
    verifier.verify(f"Bearer {tok}", method="GET", url=RS)
    assert verifier.fetches == 1
    # Forged kids do not cause fetches beyond one per interval.
    from joserfc import jwt
    forged = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": "nope"}, {"iss": ISSUER},
                        ECKey.generate_key("P-256", private=True))
    for _ in range(5):
        with pytest.raises(TokenVerificationError):
            verifier.verify(f"Bearer {forged}", method="GET", url=RS)
    assert verifier.fetches == 1
    # A real rotation: the new kid is fetched once the interval allows it.
    app_client.post("/v1/keys/rotate", headers=admin_headers, json={"now": True})
    new = token(app_client, agent, resource=RS).json()["access_token"]
    now[0] += 31
    verifier.verify(f"Bearer {new}", method="GET", url=RS)
    assert verifier.fetches == 2


def resource_server(verifier: Verifier) -> FastAPI:
    app = FastAPI()

    @app.get("/data")
    def data(request: Request) -> dict[str, Any]:
        tok = request.state.tessera_token
        return {"sub": tok.subject, "type": tok.token_type, "act": tok.actor}

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(TesseraMiddleware, verifier=verifier, exempt=["/healthz"])
    return app


def test_middleware_with_client_auth_bearer_and_dpop(app_client: TestClient, agent: Actor,
                                                     verifier: Verifier) -> None:
    rs = TestClient(resource_server(verifier), base_url=RS)
    assert rs.get("/healthz").status_code == 200
    denied = rs.get("/data")
    assert denied.status_code == 401 and "Bearer" in denied.headers["www-authenticate"]
    client = sdk_client(app_client, agent)
    resp = rs.get("/data", auth=client.auth())
    assert resp.status_code == 200 and resp.json()["sub"] == agent.id
    assert resp.json()["type"] == "Bearer"
    dpop_client = sdk_client(app_client, agent,
                             dpop_key=ECKey.generate_key("P-256", private=True))
    for _ in range(2):  # a fresh proof per request: no replay refusals
        resp = rs.get("/data", auth=dpop_client.auth())
        assert resp.status_code == 200 and resp.json()["type"] == "DPoP"
    tok = dpop_client.token()
    stolen = rs.get("/data", headers={"Authorization": f"Bearer {tok.access_token}"})
    assert stolen.status_code == 401


def test_client_caches_and_renews_once_under_concurrency(app_client: TestClient,
                                                         agent: Actor, clock: Any) -> None:
    client = sdk_client(app_client, agent, clock=lambda: clock.now().timestamp())
    first = client.token()
    assert client.token() is first and client.requests == 1
    clock.advance(first.renew_at - clock.now().timestamp() + 1)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(client.token())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.requests == 2  # one renewal for eight callers
    assert all(r.expires_at > clock.now().timestamp() for r in results)


def test_client_uses_and_rotates_refresh_tokens(app_client: TestClient, agent: Actor,
                                               clock: Any) -> None:
    client = sdk_client(app_client, agent, scope="read offline_access",
                        clock=lambda: clock.now().timestamp())
    first = client.token()
    assert first.refresh_token
    clock.advance(first.renew_at - clock.now().timestamp() + 1)
    second = client.token()
    assert second.refresh_token and second.refresh_token != first.refresh_token


def test_client_exchange_and_errors(app_client: TestClient, agent: Actor,
                                    make_identity: Callable[..., Actor]) -> None:
    user = make_identity(kind="human", allowed_scopes=["read"])
    delegate = make_identity(allowed_scopes=["read"], allowed_audiences=[RS],
                             may_act_for=[user.id])
    user_token = token(app_client, user).json()["access_token"]
    client = sdk_client(app_client, delegate)
    delegated = client.exchange(user_token, resource=RS, scope="read")
    verifier = Verifier(ISSUER, RS, http=app_client)
    result = verifier.verify(f"Bearer {delegated.access_token}", method="GET", url=RS)
    assert result.subject == user.id and result.actor["client_id"] == delegate.id
    with pytest.raises(TokenError) as err:
        client.exchange(user_token, scope="write")
    assert err.value.error == "invalid_scope"


def test_client_follows_server_nonce(app_client: TestClient, agent: Actor,
                                     services: Services) -> None:
    services.lifecycle.settings = services.lifecycle.settings.model_copy(
        update={"dpop_nonce": True})
    client = sdk_client(app_client, agent, dpop_key=ECKey.generate_key("P-256", private=True))
    tok = client.token()
    assert tok.is_dpop and client.requests == 2  # one use_dpop_nonce round trip


def test_async_client_and_middleware(services: Services, agent: Actor) -> None:
    tessera_app = create_app(services=services, run_jobs=False)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tessera_app),
                                     base_url=ISSUER) as http:
            verifier = Verifier(ISSUER, RS, async_http=http)
            rs_app = resource_server(verifier)
            client = TesseraClient(ISSUER, agent.id, agent.key, kid=agent.kid, scope="read",
                                   resource=RS, async_http=http,
                                   dpop_key=ECKey.generate_key("P-256", private=True))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rs_app),
                                         base_url=RS, auth=client.auth()) as rs:
                resp = await rs.get("/data")
                assert resp.status_code == 200, resp.text
                assert resp.json()["type"] == "DPoP"
                results = await asyncio.gather(*[client.atoken() for _ in range(5)])
                assert len({r.access_token for r in results}) == 1

    asyncio.run(scenario())

"""Helpers for the issue-3 OAuth tests: token requests, DPoP proofs, introspection."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.conftest import ASSERTION_TYPE, ISSUER, Actor

TOKEN_URL = f"{ISSUER}/oauth2/token"
INTROSPECT_URL = f"{ISSUER}/oauth2/introspect"
REVOKE_URL = f"{ISSUER}/oauth2/revoke"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def auth_form(actor: Actor, *, clock: Any = None, **form: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if clock is not None:  # sign the assertion on the fake clock's time
        now = int(clock.now().timestamp())
        overrides = {"iat": now, "exp": now + 60}
    data: dict[str, Any] = {"client_assertion_type": ASSERTION_TYPE,
                            "client_assertion": actor.assertion(**overrides)}
    data.update({k: v for k, v in form.items() if v is not None})
    return data


def token(client: TestClient, actor: Actor, *, dpop: str | None = None,
          grant_type: str = "client_credentials", clock: Any = None, **form: Any) -> Any:
    headers = {"DPoP": dpop} if dpop else {}
    return client.post("/oauth2/token", data=auth_form(actor, clock=clock,
                                                       grant_type=grant_type, **form),
                       headers=headers)


def proof(key: ECKey, method: str = "POST", url: str = TOKEN_URL, *, access_token: str | None
          = None, nonce: str | None = None, alg: str = "ES256", typ: str = "dpop+jwt",
          jwk: dict[str, Any] | None = None, iat: int | None = None, jti: str | None = None,
          ) -> str:
    header = {"typ": typ, "alg": alg, "jwk": jwk or key.as_dict(private=False)}
    claims: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(12), "htm": method,
                              "htu": url, "iat": iat if iat is not None else int(time.time())}
    if access_token is not None:
        import hashlib
        claims["ath"] = b64u(hashlib.sha256(access_token.encode()).digest())
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode(header, claims, key)


def unsigned_proof(url: str = TOKEN_URL, key: ECKey | None = None) -> str:
    key = key or ECKey.generate_key("P-256", private=True)
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)}
    claims = {"jti": secrets.token_urlsafe(8), "htm": "POST", "htu": url,
              "iat": int(time.time())}
    return f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}."


def introspect(client: TestClient, caller: Actor, tok: str, *, clock: Any = None,
               **form: Any) -> dict[str, Any]:
    resp = client.post("/oauth2/introspect", data=auth_form(caller, clock=clock, token=tok,
                                                            **form))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def revoke(client: TestClient, caller: Actor, tok: str, *, clock: Any = None,
           **form: Any) -> Any:
    return client.post("/oauth2/revoke", data=auth_form(caller, clock=clock, token=tok, **form))


def claims_of(tok: str) -> dict[str, Any]:
    payload = tok.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def count_events(services: Any, type_: str) -> int:
    with services.sessions() as s:
        return sum(1 for e in services.audit.events(s, limit=10000) if e.type == type_)

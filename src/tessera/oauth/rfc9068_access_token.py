"""JWT profile for OAuth 2.0 access tokens — https://www.rfc-editor.org/rfc/rfc9068

Issuing (§2) and validating (§4) Tessera's own access tokens.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tessera.keys.jws import sign_compact
from tessera.keys.ports import SUPPORTED_ALGS, Signer

TYP = "at+jwt"


class InvalidToken(Exception):
    """The presented access token is not valid here (reason is for logs, not clients)."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    claims: dict[str, Any]
    expires_in: int


def issue(signer: Signer, *, issuer: str, subject: str, client_id: str, audience: str | list[str],
          scope: str | None, now: datetime, ttl: int,
          extra: dict[str, Any] | None = None) -> IssuedToken:
    iat = int(now.timestamp())
    jti = secrets.token_urlsafe(16)
    claims: dict[str, Any] = {"iss": issuer, "sub": subject, "aud": audience, "exp": iat + ttl,
                              "iat": iat, "nbf": iat, "jti": jti, "client_id": client_id}
    if scope:
        claims["scope"] = scope
    if extra:
        claims.update(extra)
    # RFC 9068 §2.1: the header's typ MUST be "at+jwt".
    return IssuedToken(sign_compact(signer, claims, typ=TYP), jti, claims, ttl)


def validate(token: str, keys: KeySet, *, issuer: str, audience: str | None, now: datetime,
             leeway: int = 30) -> dict[str, Any]:
    """RFC 9068 §4 checks; raises InvalidToken. Algorithms: only those Tessera signs with."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(SUPPORTED_ALGS))
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken(f"token does not verify: {type(exc).__name__}") from exc
    header, claims = decoded.header, dict(decoded.claims)
    if str(header.get("typ", "")).lower() not in (TYP, "application/at+jwt"):
        raise InvalidToken("typ is not at+jwt")
    if claims.get("iss") != issuer:
        raise InvalidToken("wrong issuer")
    ts = now.timestamp()
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= ts - leeway:
        raise InvalidToken("expired")
    nbf = claims.get("nbf", claims.get("iat"))
    if isinstance(nbf, (int, float)) and nbf > ts + leeway:
        raise InvalidToken("not yet valid")
    if audience is not None:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in auds:
            raise InvalidToken("wrong audience")
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
        raise InvalidToken("sub and jti required")
    return claims

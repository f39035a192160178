"""Small JOSE helpers for the SDK (duplicated on purpose: the SDK imports no server code)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Keyed by (kty, crv) as a JWK holds them, so looked up with members of any JSON type.
ALGS_BY_KEY: dict[tuple[object, object], str] = {
    ("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("EC", "P-521"): "ES512",
    ("OKP", "Ed25519"): "EdDSA", ("RSA", None): "PS256"}
AsymmetricKey = ECKey | OKPKey | RSAKey


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath_of(access_token: str) -> str:
    """RFC 9449 §4.2: base64url SHA-256 of the access token."""
    return b64u(hashlib.sha256(access_token.encode("ascii")).digest())


def import_private(jwk: dict[str, Any] | AsymmetricKey) -> AsymmetricKey:
    key = jwk if isinstance(jwk, (ECKey, OKPKey, RSAKey)) else JWKRegistry.import_key(dict(jwk))
    if not isinstance(key, (ECKey, OKPKey, RSAKey)) or not key.is_private:
        raise ValueError("an asymmetric private key is required")
    return key


def alg_for(key: AsymmetricKey, preferred: str | None = None) -> str:
    if preferred:
        return preferred
    data = key.as_dict(private=False)
    crv = data.get("crv") if data.get("kty") in ("EC", "OKP") else None
    alg = ALGS_BY_KEY.get((data.get("kty"), crv))
    if alg is None:
        raise ValueError("unsupported key type")
    return alg


def client_assertion(key: AsymmetricKey, client_id: str, audience: str, *, kid: str | None,
                     alg: str, now: float | None = None, lifetime: int = 60) -> str:
    """RFC 7523 §3: a short-lived, single-use private_key_jwt assertion."""
    iat = int(now if now is not None else time.time())
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": iat,
              "exp": iat + lifetime, "jti": secrets.token_urlsafe(16)}
    return jwt.encode(header, claims, key, algorithms=[alg])


def dpop_proof(key: AsymmetricKey, method: str, url: str, *, alg: str,
               access_token: str | None = None, nonce: str | None = None,
               now: float | None = None) -> str:
    """RFC 9449 §4.2: a proof for one request; the URL loses its query and fragment."""
    htu = url.split("#", 1)[0].split("?", 1)[0]
    claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method.upper(),
                              "htu": htu, "iat": int(now if now is not None else time.time())}
    if access_token is not None:
        claims["ath"] = ath_of(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key, algorithms=[alg])


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, not verified (for routing decisions only)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")

    def part(s: str) -> dict[str, Any]:
        value = json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - callers catch ValueError
        return value

    return part(parts[0]), part(parts[1])

"""Which public keys an identity may register (parsed with joserfc, RFC 7517/7518/8037/7638)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from tessera.errors import ValidationFailed

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
ALLOWED = {("EC", "P-256"), ("EC", "P-384"), ("EC", "P-521"), ("OKP", "Ed25519"), ("RSA", None)}
MIN_RSA_BITS = 2048
# Algorithms a client assertion may use, by key type: asymmetric only (no HS*, no none).
# Keyed by (kty, crv) as a JWK holds them, so looked up with members of any JSON type.
ALGS_BY_KTY: dict[tuple[object, object], tuple[str, ...]] = {
    ("EC", "P-256"): ("ES256",), ("EC", "P-384"): ("ES384",), ("EC", "P-521"): ("ES512",),
    ("OKP", "Ed25519"): ("EdDSA", "Ed25519"),
    ("RSA", None): ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
}


def _b64u_bits(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw, "big").bit_length()


def validate_public_jwk(data: Any) -> tuple[dict[str, Any], str, str]:
    """Check a JWK is an acceptable public key; return (clean jwk, kid, RFC 7638 thumbprint)."""
    if not isinstance(data, dict):
        raise ValidationFailed("jwk must be a JSON object")
    kty = data.get("kty")
    if kty == "oct":
        raise ValidationFailed("symmetric keys (kty=oct) are not accepted: register a public key")
    if PRIVATE_MEMBERS & data.keys():
        raise ValidationFailed("the JWK contains private key material; send only the public key")
    crv = data.get("crv") if kty in ("EC", "OKP") else None
    if (kty, crv) not in ALLOWED:
        raise ValidationFailed(
            f"unsupported key type or curve ({kty}/{crv}); use EC P-256/P-384/P-521, "
            "Ed25519 or RSA of at least 2048 bits")
    if kty == "RSA":
        n = data.get("n")
        if not isinstance(n, str):
            raise ValidationFailed("the JWK could not be parsed as a public key")
        # Check the size before joserfc sees it (it only warns about small keys).
        if _b64u_bits(n) < MIN_RSA_BITS:
            raise ValidationFailed(f"RSA keys must be at least {MIN_RSA_BITS} bits")
    try:
        key = JWKRegistry.import_key(dict(data))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValidationFailed("the JWK could not be parsed as a public key") from exc
    if not isinstance(key, (ECKey, OKPKey, RSAKey)) or key.is_private:
        raise ValidationFailed("the JWK is not an acceptable public key")
    alg = data.get("alg")
    if alg is not None and alg not in ALGS_BY_KTY[(kty, crv)]:
        raise ValidationFailed(f"alg {alg!r} does not fit a {kty} key")
    use = data.get("use")
    if use is not None and use != "sig":
        raise ValidationFailed("use must be 'sig'")
    thumbprint = key.thumbprint()
    kid = data.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 200):
        raise ValidationFailed("kid must be a non-empty string of at most 200 characters")
    public = key.as_dict(private=False)
    public.pop("kid", None)
    if kid:
        public["kid"] = kid
    for member in ("alg", "use"):
        if member in data:
            public[member] = data[member]
    return public, kid or thumbprint, thumbprint


def algorithms_for(jwk: dict[str, Any]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    crv = jwk.get("crv") if kty in ("EC", "OKP") else None
    if "alg" in jwk:
        return (jwk["alg"],)
    return ALGS_BY_KTY.get((kty, crv), ())

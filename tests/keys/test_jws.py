"""tessera.keys.jws: the compact JWS Tessera signs with (access tokens, SETs, checkpoints)."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jws
from joserfc.jwk import JWKRegistry

from tessera.keys.jws import sign_compact
from tessera.keys.software import SoftwareSigner, public_jwk_of


def _part(token: str, i: int) -> dict:
    seg = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def _signer(kid: str, alg: str) -> SoftwareSigner:
    private = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" \
        else ed25519.Ed25519PrivateKey.generate()
    return SoftwareSigner(kid, alg, private)


def test_signed_token_verifies_and_carries_its_own_header() -> None:
    for alg in ("ES256", "EdDSA"):
        signer = _signer(f"k-{alg}", alg)
        token = sign_compact(signer, {"sub": "ü-agent", "n": 1}, typ="at+jwt")
        if alg == "ES256":  # (joserfc warns on the EdDSA name, RFC 9864)
            key = JWKRegistry.import_key(public_jwk_of(signer._private.public_key(), "k", alg))
            assert jws.deserialize_compact(token, key, algorithms=[alg]).payload
        assert _part(token, 0) == {"alg": alg, "typ": "at+jwt", "kid": f"k-{alg}"}
        assert _part(token, 1) == {"sub": "ü-agent", "n": 1}
        assert "\\u" not in base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()


def test_cached_headers_never_cross_typ_kid_or_extra_members() -> None:
    a, b = _signer("kid-a", "ES256"), _signer("kid-b", "ES256")
    assert _part(sign_compact(a, {}, typ="at+jwt"), 0)["kid"] == "kid-a"
    assert _part(sign_compact(b, {}, typ="at+jwt"), 0)["kid"] == "kid-b"
    assert _part(sign_compact(a, {}, typ="secevent+jwt"), 0)["typ"] == "secevent+jwt"
    extra = _part(sign_compact(a, {}, typ="at+jwt", extra_header={"x5t#S256": "abc"}), 0)
    assert extra == {"alg": "ES256", "typ": "at+jwt", "kid": "kid-a", "x5t#S256": "abc"}
    assert "x5t#S256" not in _part(sign_compact(a, {}, typ="at+jwt"), 0)

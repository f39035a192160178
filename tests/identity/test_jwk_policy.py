"""Which public keys an identity may register."""

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from tessera.errors import ValidationFailed
from tessera.identity.jwk_policy import validate_public_jwk

# RFC 7638 §3.1 example key and its thumbprint.
RFC7638_KEY = {
    "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
         "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
         "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWh"
         "AI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_accepts_rfc7638_example_and_records_its_thumbprint() -> None:
    jwk, kid, thumb = validate_public_jwk(RFC7638_KEY)
    assert thumb == RFC7638_THUMBPRINT
    assert kid == "2011-04-29"
    assert "d" not in jwk


@pytest.mark.parametrize("make", [
    lambda: ECKey.generate_key("P-256", private=True).as_dict(private=False),
    lambda: ECKey.generate_key("P-384", private=True).as_dict(private=False),
    lambda: OKPKey.generate_key("Ed25519", private=True).as_dict(private=False),
    lambda: RSAKey.generate_key(2048, private=True).as_dict(private=False),
])
def test_accepts_public_keys(make) -> None:  # type: ignore[no-untyped-def]
    jwk, kid, thumb = validate_public_jwk(make())
    assert kid == thumb and len(thumb) == 43


def test_kid_defaults_to_thumbprint() -> None:
    key = ECKey.generate_key("P-256", private=True)
    _jwk, kid, _ = validate_public_jwk(key.as_dict(private=False))
    assert kid == key.thumbprint()


@pytest.mark.parametrize("case, jwk, message", [
    ("rejects private EC key", ECKey.generate_key("P-256", private=True).as_dict(private=True),
     "private key material"),
    ("rejects private OKP key",
     OKPKey.generate_key("Ed25519", private=True).as_dict(private=True), "private key material"),
    ("rejects symmetric key", OctKey.generate_key(256).as_dict(), "symmetric"),
    ("rejects unknown curve", {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"},
     "unsupported key type or curve"),
    ("rejects unknown kty", {"kty": "XYZ"}, "unsupported key type"),
    ("rejects non-object", ["kty", "EC"], "JSON object"),
    ("rejects garbage coordinates", {"kty": "EC", "crv": "P-256", "x": "!!", "y": "??"},
     "could not be parsed"),
    ("rejects alg mismatch", {**ECKey.generate_key("P-256", private=True).as_dict(
        private=False), "alg": "HS256"}, "does not fit"),
    ("rejects use=enc", {**ECKey.generate_key("P-256", private=True).as_dict(
        private=False), "use": "enc"}, "use must be"),
])
def test_rejects(case: str, jwk: object, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        validate_public_jwk(jwk)


def test_rejects_rsa_under_2048_bits() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = small.public_numbers().n
    jwk = {"kty": "RSA", "e": "AQAB",
           "n": base64.urlsafe_b64encode(n.to_bytes(128, "big")).rstrip(b"=").decode()}
    with pytest.raises(ValidationFailed, match="at least 2048"):
        validate_public_jwk(jwk)

"""rfc7523_client_assertion.verify_signature: joserfc's algorithm objects used directly, for
every assertion algorithm (the endpoint tests sign with ES256 only)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tessera.jwt_peek import peek_compact
from tessera.oauth.rfc7523_client_assertion import (
    ASSERTION_ALGS,
    AssertionRejected,
    _int_claim,
    verify_signature,
)

RSA = RSAKey.generate_key(2048, private=True)
RSA_OTHER = RSAKey.generate_key(2048, private=True)
KEYS: dict[str, Callable[[], Any]] = {
    "ES256": lambda: ECKey.generate_key("P-256", private=True),
    "ES384": lambda: ECKey.generate_key("P-384", private=True),
    "ES512": lambda: ECKey.generate_key("P-521", private=True),
    "EdDSA": lambda: OKPKey.generate_key("Ed25519", private=True),
    "Ed25519": lambda: OKPKey.generate_key("Ed25519", private=True),
    **{alg: (lambda: RSA) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(alg: str, key: Any, claims: dict[str, Any] | None = None) -> str:
    """Signed with the algorithm object (jwt.encode warns on EdDSA, which tests make an
    error)."""
    header = b64u(json.dumps({"alg": alg, "kid": "k"}).encode())
    payload = b64u(json.dumps(claims or {"iss": "a", "jti": "j"}).encode())
    signature = jws.JWSRegistry.algorithms[alg].sign(f"{header}.{payload}".encode(), key)
    return f"{header}.{payload}.{b64u(signature)}"


def test_every_assertion_algorithm_is_covered() -> None:
    assert set(KEYS) == ASSERTION_ALGS


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_verifies_a_genuine_signature_only(alg: str) -> None:
    key = KEYS[alg]()
    token = sign(alg, key)
    assert verify_signature(peek_compact(token, ASSERTION_ALGS), alg, key)
    # The same header and signature over another payload.
    header, _, signature = token.split(".")
    other = sign(alg, key, {"iss": "b", "jti": "j"}).split(".")[1]
    assert not verify_signature(peek_compact(f"{header}.{other}.{signature}", ASSERTION_ALGS),
                                alg, key)
    # Another key of the same kind.
    stranger = RSA_OTHER if isinstance(key, RSAKey) else KEYS[alg]()
    assert not verify_signature(peek_compact(token, ASSERTION_ALGS), alg, stranger)


@pytest.mark.parametrize("alg, key", [
    ("ES256", ECKey.generate_key("P-384", private=True)),  # the wrong curve
    ("ES256", RSA),  # the wrong key type
    ("RS256", ECKey.generate_key("P-256", private=True)),
    ("EdDSA", ECKey.generate_key("P-256", private=True)),
    ("RS256", RSAKey.import_key({**RSA.as_dict(private=True), "alg": "PS256"})),  # its own alg
    ("RS256", RSAKey.import_key({**RSA.as_dict(private=True), "use": "enc"})),  # its own use
])
def test_refuses_a_key_unfit_for_the_algorithm(alg: str, key: Any) -> None:
    token = sign(alg, KEYS[alg]())
    assert not verify_signature(peek_compact(token, ASSERTION_ALGS), alg, key)


def test_refuses_an_algorithm_the_header_does_not_name() -> None:
    key = KEYS["ES256"]()
    peeked = peek_compact(sign("ES256", key), ASSERTION_ALGS)
    assert verify_signature(peeked, "ES256", key)
    assert not verify_signature(peeked, "ES384", key)
    assert not verify_signature(peeked, "HS256", key)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_time_claim_is_refused_not_raised(value: float) -> None:
    """peek_compact's JSON parser refuses NaN and Infinity already; claims reaching the check
    another way must still be refused as invalid_client, not raise from int() (a 500)."""
    with pytest.raises(AssertionRejected) as refused:
        _int_claim({"exp": value}, "exp")
    assert refused.value.reason == "exp is not a finite number"
    assert refused.value.error == "invalid_client"

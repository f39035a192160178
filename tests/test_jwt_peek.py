"""tessera.jwt_peek: the pre-verification rules shared by client assertions and federated
tokens (the header rules are the whole header check on the client-assertion path)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey

from tessera.jwt_peek import MalformedJWT, peek, peek_compact

ALGS = frozenset({"ES256", "RS256"})
KEY = ECKey.generate_key("P-256", private=True)
CLAIMS = {"iss": "a", "sub": "a", "aud": "https://as.example/oauth2/token", "exp": 2_000_000_000,
          "jti": "j"}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: Any) -> str:
    return b64u(json.dumps(obj).encode())


def signed(header: dict[str, Any], claims: dict[str, Any] = CLAIMS) -> str:
    """A compact JWS with a valid ES256 signature, whatever its header (built by hand: joserfc
    refuses to sign most of the headers below)."""
    signing_input = f"{seg(header)}.{seg(claims)}"
    signature = jws.JWSRegistry.algorithms["ES256"].sign(signing_input.encode(), KEY)
    return f"{signing_input}.{b64u(signature)}"


def test_accepts_a_well_formed_token_and_returns_what_the_signature_covers() -> None:
    token = jwt.encode({"alg": "ES256", "kid": "k1", "typ": "JWT"}, CLAIMS, KEY)
    peeked = peek_compact(token, ALGS)
    compact = jws.extract_compact(token.encode())
    assert peeked.header == compact.protected == {"alg": "ES256", "kid": "k1", "typ": "JWT"}
    assert peeked.claims == CLAIMS
    assert peeked.signing_input == token.rsplit(".", 1)[0].encode()
    assert peeked.signature == base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    assert jws.JWSRegistry.algorithms["ES256"].verify(peeked.signing_input, peeked.signature,
                                                       KEY)
    assert peek(token, ALGS) == (peeked.header, peeked.claims)


def test_accepts_b64_true_and_the_registered_string_members() -> None:
    header = {"alg": "ES256", "kid": "k", "typ": "JWT", "cty": "x", "x5t": "t", "x5t#S256": "t",
              "b64": True}
    assert peek_compact(signed(header), ALGS).header == header


HEADER_CASES: dict[str, dict[str, Any]] = {
    "rejects crit naming an unknown extension": {"alg": "ES256", "crit": ["exp"], "exp": 1},
    "rejects crit even naming a registered member": {"alg": "ES256", "crit": ["b64"],
                                                     "b64": True},
    "rejects crit with an unencoded payload": {"alg": "ES256", "crit": ["b64"], "b64": False},
    "rejects b64 false": {"alg": "ES256", "b64": False},
    "rejects b64 that is not a boolean": {"alg": "ES256", "b64": "true"},
    "rejects a non-string kid": {"alg": "ES256", "kid": 7},
    "rejects a non-string typ": {"alg": "ES256", "typ": ["JWT"]},
    "rejects a non-string cty": {"alg": "ES256", "cty": {}},
    "rejects a non-string x5t": {"alg": "ES256", "x5t": 1},
    "rejects a non-string x5t#S256": {"alg": "ES256", "x5t#S256": None},
    "rejects a list alg": {"alg": ["ES256"]},
    "rejects an object alg": {"alg": {"ES256": 1}},
    "rejects a missing alg": {"kid": "k"},
    "rejects an alg outside the list": {"alg": "ES384"},
    "rejects alg none": {"alg": "none"},
    "rejects an unregistered member": {"alg": "ES256", "foo": "bar"},
    "rejects an embedded jwk": {"alg": "ES256", "jwk": KEY.as_dict(private=False)},
    "rejects jku": {"alg": "ES256", "jku": "https://evil.example/jwks"},
    "rejects x5u": {"alg": "ES256", "x5u": "https://evil.example/cert"},
    "rejects x5c": {"alg": "ES256", "x5c": ["MIIB"]},
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_header_rules(case: str) -> None:
    with pytest.raises(MalformedJWT):
        peek_compact(signed(HEADER_CASES[case]), ALGS)


GOOD = jwt.encode({"alg": "ES256"}, CLAIMS, KEY)
H, P, S = GOOD.split(".")

NOT_UTF8 = b64u(b'{"a": "' + bytes([0xFF]) + b'"}')
WITH_BOM = b64u(bytes([0xEF, 0xBB, 0xBF]) + b'{"alg": "ES256"}')
NAN = b64u(b'{"exp": NaN}')
DEEP = b64u(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}")  # json.loads: RecursionError
NOT_CANONICAL = S[:-1] + ("B" if S[-1] != "B" else "C")  # 86 characters: the last must be AQgw
TOKEN_CASES: dict[str, str] = {
    "rejects two segments": f"{H}.{P}",
    "rejects four segments": f"{H}.{P}.{S}.{S}",
    "rejects padding": f"{H}.{P}.{S}==",
    "rejects padding in the header": f"{H}=.{P}.{S}",
    "rejects standard base64 characters": f"{H}.{P}.{S[:-3]}+/A",
    "rejects a non-canonical last character": f"{H}.{P}.{NOT_CANONICAL}",
    "rejects whitespace": f"{H}.{P}.{S[:4]} {S[4:]}",
    "rejects a segment of 4n+1 characters": f"{H}.{P}.{S}AAA",
    "rejects non-ASCII": f"{H}.{P}.{S[:4]}\u00e9{S[5:]}",
    "rejects a header that is not an object": f"{seg(['alg'])}.{P}.{S}",
    "rejects a payload that is not an object": f"{H}.{seg(['iss'])}.{S}",
    "rejects a payload that is not JSON": f"{H}.{b64u(b'not json')}.{S}",
    "rejects a payload that is not UTF-8": f"{H}.{NOT_UTF8}.{S}",
    "rejects a UTF-8 BOM": f"{WITH_BOM}.{P}.{S}",
    "rejects an empty payload": f"{H}..{S}",
    "rejects a NaN claim": f"{H}.{NAN}.{S}",
    "rejects deeply nested JSON": f"{H}.{DEEP}.{S}",
    "rejects an oversize header": f"{seg({'alg': 'ES256', 'kid': 'k' * 400})}.{P}.{S}",
    "rejects an oversize signature": f"{H}.{P}.{'A' * 1028}",
}


@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_token_rules(case: str) -> None:
    with pytest.raises(MalformedJWT):
        peek_compact(TOKEN_CASES[case], ALGS)


def test_valid_jti_is_text_the_replay_cache_can_store() -> None:
    from tessera.jwt_peek import valid_jti

    assert valid_jti("a") and valid_jti("é" * 200) and valid_jti("日本")
    for bad in ("", "a" * 201, "a\x00b", "x\ud800", None, 42, ["a"]):
        assert not valid_jti(bad), bad

"""Read a compact JWS's header and claims before verifying it, to choose the key to verify with.

Shared by every place that accepts a JWT signed by someone else (client assertions, federated
tokens), so the pre-verification rules are the same everywhere: a known asymmetric algorithm,
no header that names its own key (`jwk`, `jku`, `x5u`, `x5c` — RFC 7515 §4.1.3-6), which would
let a token vouch for itself, and the protected header rules that joserfc's `JWSRegistry`
enforces (registered members only, each of its type). Client assertions verify the signature
over what this returns with joserfc's algorithm object directly, so these rules are the whole
header check on that path.
"""

from __future__ import annotations

import binascii
from collections.abc import Collection
from typing import Any, NamedTuple, TypeGuard

import orjson

from tessera.text import storable

SELF_KEYED_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})
# RFC 7515 §4.1: the registered members we accept, each a string (`alg` is also checked
# against the caller's list). Any other member is refused, as joserfc's strict header check
# does (`JWSRegistry(strict_check_header=True)`).
STRING_HEADERS = frozenset({"alg", "kid", "typ", "cty", "x5t", "x5t#S256"})
# joserfc's size limits (`JWSRegistry.max_*_length`), on the encoded segments.
MAX_HEADER_SEGMENT = 512
MAX_PAYLOAD_SEGMENT = 128_000
MAX_SIGNATURE_SEGMENT = 1024

# base64url to standard base64; '+', '/' and '=' (not base64url, and no padding in JWS,
# RFC 7515 §2) become '!', which the strict decoder refuses.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
# With 2 or 3 characters in the last quantum, the unused low bits must be zero (RFC 4648
# §3.5): only these final characters encode them so. (joserfc's `urlsafe_b64decode` rule.)
_CANONICAL_LAST = {2: "AQgw", 3: "AEIMQUYcgkosw048"}
_PADDING = {0: b"", 2: b"==", 3: b"="}


class MalformedJWT(ValueError):
    """The token cannot be considered for verification (the message says why; not secret)."""


class PeekedJWS(NamedTuple):
    """A compact JWS split and decoded, not verified: the claims are those of the payload the
    signature covers, so they are verified once `signature` checks out over `signing_input`."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def peek(token: str, allowed_algs: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified protected header and claims; raises MalformedJWT."""
    peeked = peek_compact(token, allowed_algs)
    return peeked.header, peeked.claims


def _b64url_decode(segment: str) -> bytes:
    """Strict base64url (RFC 7515 §2): no padding, no other alphabet, canonical last
    character; raises ValueError."""
    rem = len(segment) % 4
    if rem == 1 or (rem and segment[-1] not in _CANONICAL_LAST[rem]):
        raise ValueError("not base64url")
    return binascii.a2b_base64(segment.encode("ascii").translate(_TO_STANDARD) + _PADDING[rem],
                               strict_mode=True)


def peek_compact(token: str, allowed_algs: Collection[str]) -> PeekedJWS:
    """The parts of the compact JWS `token`, decoded once, for `peek` and for verifying it
    without parsing it a second time; raises MalformedJWT.

    The parse is written out here rather than done with joserfc's `extract_compact`: on the
    token endpoint it runs for every client assertion, and this is half the cost, with the
    same rules (three segments, joserfc's size limits, strict base64url, JSON objects).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedJWT("malformed token")
    header_segment, payload_segment, signature_segment = parts
    if len(header_segment) > MAX_HEADER_SEGMENT or len(payload_segment) > MAX_PAYLOAD_SEGMENT \
            or len(signature_segment) > MAX_SIGNATURE_SEGMENT:
        raise MalformedJWT("malformed token")
    try:
        # orjson: a fifth of json.loads's cost here, and stricter where it differs (UTF-8 only,
        # no NaN or Infinity, no lone surrogate; nesting too deep is a JSONDecodeError, where
        # json.loads raised RecursionError).
        header = orjson.loads(_b64url_decode(header_segment))
        claims = orjson.loads(_b64url_decode(payload_segment))
        signature = _b64url_decode(signature_segment)
    except (ValueError, TypeError) as exc:  # binascii.Error and orjson's errors included
        raise MalformedJWT("malformed token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedJWT("malformed token")
    for name, value in header.items():
        if name in STRING_HEADERS:
            if not isinstance(value, str):
                raise MalformedJWT(f"header member {name} is not a string")
        elif name in SELF_KEYED_HEADERS:
            raise MalformedJWT("token header names its own key")
        elif name == "crit":
            # RFC 7515 §4.1.11: we understand no extension, so any `crit` is refused.
            raise MalformedJWT("token header has critical extensions")
        elif name == "b64":
            # RFC 7797: an unencoded payload is not for JWTs (§7); `true` is the default.
            if value is not True:
                raise MalformedJWT("token payload is not base64url-encoded")
        else:
            raise MalformedJWT("token header has an unsupported member")
    alg = header.get("alg")
    if alg not in allowed_algs:
        raise MalformedJWT(f"algorithm {alg!r} not allowed")
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    return PeekedJWS(header, claims, signing_input, signature)


def valid_jti(value: object) -> TypeGuard[str]:
    """A `jti` the replay cache can store: 1-200 characters, no NUL, no lone surrogate. The
    cache is written in the audit committer's batch, where a value PostgreSQL's text cannot
    hold (a NUL) or nothing can encode (a lone surrogate) would fail every request of it."""
    return isinstance(value, str) and 0 < len(value) <= 200 and storable(value)

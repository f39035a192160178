"""Read a compact JWS's header and claims before verifying it, to choose the key to verify with.

Shared by every place that accepts a JWT signed by someone else (client assertions, federated
tokens), so the pre-verification rules are the same everywhere: a known asymmetric algorithm,
and no header that names its own key (`jwk`, `jku`, `x5u`, `x5c` — RFC 7515 §4.1.3-6), which
would let a token vouch for itself.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from joserfc.errors import JoseError
from joserfc.jws import CompactSignature, extract_compact

SELF_KEYED_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})


class MalformedJWT(ValueError):
    """The token cannot be considered for verification (the message says why; not secret)."""


def peek(token: str, allowed_algs: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified protected header and claims; raises MalformedJWT."""
    _, header, claims = peek_compact(token, allowed_algs)
    return header, claims


def peek_compact(token: str, allowed_algs: Collection[str]
                 ) -> tuple[CompactSignature, dict[str, Any], dict[str, Any]]:
    """`peek`, plus the parsed compact JWS, to verify with `joserfc.jws.validate_compact`
    without parsing the token a second time (the claims returned are those of its payload, so
    they are verified once its signature is)."""
    try:
        compact = extract_compact(token.encode())
        header = dict(compact.protected)
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, TypeError) as exc:
        raise MalformedJWT("malformed token") from exc
    if not isinstance(claims, dict):
        raise MalformedJWT("malformed token")
    alg = header.get("alg")
    if alg not in allowed_algs:
        raise MalformedJWT(f"algorithm {alg!r} not allowed")
    if SELF_KEYED_HEADERS & header.keys():
        raise MalformedJWT("token header names its own key")
    return compact, header, claims

"""Refreshing an access token, RFC 6749 §6 — https://www.rfc-editor.org/rfc/rfc6749#section-6

With the OAuth 2.1 / RFC 9700 §4.14.2 rules: refresh tokens are opaque, high-entropy, bound
to the client, rotated on every use, and a reused (already rotated) token revokes its family.
This module holds the token format; `oauth.lifecycle` holds the grant.
"""

from __future__ import annotations

import hashlib
import secrets

from tessera.errors import InvalidRequest

GRANT_TYPE = "refresh_token"
# Recognisable prefix so secret scanners can find leaked refresh tokens.
PREFIX = "tsr_rt_"
MAX_LENGTH = 200


def new_token() -> str:
    """256 bits of randomness behind the prefix."""
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Only this SHA-256 is stored: a database leak yields no usable refresh token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_refresh_token(token: str) -> bool:
    return token.startswith(PREFIX)


def parse(form: dict[str, str]) -> str:
    # §6: refresh_token is REQUIRED.
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is required")
    if len(token) > MAX_LENGTH:
        raise InvalidRequest("refresh_token is malformed")
    return token

"""OAuth 2.0 Token Introspection — https://www.rfc-editor.org/rfc/rfc7662

Request parsing (§2.1) and the response members (§2.2). Whether a token is active is decided
by `oauth.lifecycle`, which consults revocations and the registry.
"""

from __future__ import annotations

from typing import Any

from tessera.errors import InvalidRequest

INACTIVE: dict[str, Any] = {"active": False}
# §2.2 members copied from a JWT access token when it is active.
CLAIMS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "act", "cnf")


def parse(form: dict[str, str]) -> tuple[str, str | None]:
    # §2.1: token is REQUIRED, token_type_hint OPTIONAL.
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    return token, form.get("token_type_hint") or None


def access_token_response(claims: dict[str, Any], username: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"active": True}
    for name in CLAIMS:
        if name in claims:
            body[name] = claims[name]
    # §2.2 token_type: how the token must be presented. DPoP only for a token bound to a
    # DPoP key (RFC 9449 §6.2, `cnf.jkt`); a certificate-bound token (RFC 8705 §3,
    # `cnf.x5t#S256`) is presented as a Bearer token over the bound connection.
    cnf = claims.get("cnf")
    body["token_type"] = "DPoP" if isinstance(cnf, dict) and "jkt" in cnf else "Bearer"
    if username:
        body["username"] = username
    return body

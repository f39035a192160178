"""OAuth 2.0 Token Revocation — https://www.rfc-editor.org/rfc/rfc7009

Request parsing (§2.1). Revoking an unknown or invalid token is a success (§2.2): the client
cannot learn anything from the answer. Revoking a refresh token revokes its whole family and
the access tokens issued in it (§2.1, SHOULD).
"""

from __future__ import annotations

from tessera.errors import InvalidRequest

HINTS = frozenset({"access_token", "refresh_token"})


def parse(form: dict[str, str]) -> tuple[str, str | None]:
    # §2.1: token is REQUIRED; an unknown token_type_hint MAY be ignored, and is.
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    hint = form.get("token_type_hint") or None
    return token, hint if hint in HINTS else None

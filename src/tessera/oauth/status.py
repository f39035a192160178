"""Whether an access token Tessera issued is still good: not revoked, and every party behind
it (client, subject, each actor of a nested `act` chain) still allowed to act.

Shared by introspection (RFC 7662), token exchange (RFC 8693 subject tokens) and the API gate
(`tessera.oauth.api_gate`), so the three never disagree about a token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from tessera.clock import utc
from tessera.identity import IdentityService
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.models import RevokedTokenRow


def check_active(session: Session, claims: dict[str, Any], identities: IdentityService) -> None:
    """Raises InvalidToken when the token was revoked or a party behind it may not act:
    the client and every actor of a nested `act` chain must be registered, and each party
    (those and the subject) active, not suspended since the token was issued (a suspension
    ends what was issued before it for good, resumed or not), and without a credential
    revoked since."""
    jti = claims.get("jti")
    if isinstance(jti, str) and session.get(RevokedTokenRow, jti) is not None:
        raise at.InvalidToken("revoked")
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or isinstance(iat, bool):
        raise at.InvalidToken("iat missing")
    issued = datetime.fromtimestamp(iat, UTC)
    required = [claims.get("client_id")]
    act = claims.get("act")
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("client_id"), str):
            raise at.InvalidToken("an actor of the act chain names no client")
        required.append(act["client_id"])
        act = act.get("act")
    for party in dict.fromkeys([*required, claims.get("sub")]):
        if not isinstance(party, str):
            raise at.InvalidToken("a party of the token is missing")
        row = identities.find(session, party)
        if row is None:
            if party in required:
                raise at.InvalidToken("unknown client or actor")
            continue
        if not identities.is_usable(row):
            raise at.InvalidToken("a party is not active")
        # iat has whole seconds: a token of the suspension's own second is refused too.
        suspended = row.suspended_at
        if suspended is not None and utc(suspended).timestamp() // 1 >= iat:
            raise at.InvalidToken("a party was suspended after issuance")
        if identities.credential_revoked_since(session, row.id, issued):
            raise at.InvalidToken("a key was revoked after issuance")


__all__ = ["check_active"]

"""RFC 8417 Security Event Token (SET) — https://www.rfc-editor.org/rfc/rfc8417

CAEP event types (OpenID Continuous Access Evaluation Profile 1.0) with the subject as an
RFC 9493 `iss_sub` subject identifier.
"""

from __future__ import annotations

import secrets
from typing import Any

from tessera.keys.jws import sign_compact
from tessera.keys.ports import Signer

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED = CAEP + "session-revoked"
CREDENTIAL_CHANGE = CAEP + "credential-change"
# RFC 8417 §2.3: explicit typing with "secevent+jwt".
SET_TYP = "secevent+jwt"


def build_set(*, issuer: str, audience: str, event_type: str, subject: str,
              event_timestamp: int, now: int, detail: dict[str, Any] | None = None,
              txn: str | None = None) -> dict[str, Any]:
    """The claims of one SET carrying one event (RFC 8417 §2.2)."""
    claims: dict[str, Any] = {
        "iss": issuer,  # §2.2: REQUIRED
        "iat": now,  # §2.2: REQUIRED
        "jti": f"set_{secrets.token_hex(12)}",  # §2.2: REQUIRED, unique
        "aud": audience,
        "sub_id": {"format": "iss_sub", "iss": issuer, "sub": subject},
        # §2.2: "events" REQUIRED; one member per event type, its payload an object.
        "events": {event_type: {"event_timestamp": event_timestamp, **(detail or {})}},
    }
    if txn:
        claims["txn"] = txn
    # No "exp": a SET states a fact (§4.1 keeps SETs distinct from ID and access tokens).
    return claims


def sign_set(signer: Signer, claims: dict[str, Any]) -> str:
    return sign_compact(signer, claims, typ=SET_TYP)

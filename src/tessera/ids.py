"""Identifiers for stored rows."""

from __future__ import annotations

import secrets
from datetime import datetime


def new_id(prefix: str, now: datetime, random_bytes: int = 4) -> str:
    """Time-ordered id: prefix, 12 hex digits of milliseconds, `random_bytes` random bytes in
    hex (8 digits by default; more for rows made thousands of times a second, e.g. audit
    events, where two ids of one millisecond must not collide).

    Time-ordered so that a row's insert lands at the right edge of its unique index: with
    random ids, each row of a batch dirties a different index page (and on SQLite writes it
    to the WAL again)."""
    return f"{prefix}_{int(now.timestamp() * 1000):012x}{secrets.token_hex(random_bytes)}"

"""Identifiers for stored rows."""

from __future__ import annotations

import secrets
from datetime import datetime


def new_id(prefix: str, now: datetime) -> str:
    """Time-ordered id: prefix, 12 hex digits of milliseconds, 8 random hex digits.

    Time-ordered so that a row's insert lands at the right edge of its unique index: with
    random ids, each row of a batch dirties a different index page (and on SQLite writes it
    to the WAL again)."""
    return f"{prefix}_{int(now.timestamp() * 1000):012x}{secrets.token_hex(4)}"

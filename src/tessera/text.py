"""Which strings a database can store, and which can name something.

PostgreSQL's text refuses NUL, and no encoding holds a lone surrogate (JSON's `\\ud800` decodes
to one): a query or a write with such a value fails in the driver, as a 500 if nothing stops it
first. Every edge that takes a string from outside (a path segment, a query filter, a JSON body,
a claim used as a lookup key) checks it here, so such input is refused as the protocol's own
error on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
from typing import TypeGuard

# C0 controls and DEL: no identifier, name, filter or key id of ours contains one.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def storable(value: str) -> bool:
    """No NUL and no lone surrogate: both databases can store it (free text may hold other
    control characters, e.g. line breaks in a policy file)."""
    if "\x00" in value:
        return False
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def identifier(value: object, max_length: int = 200) -> TypeGuard[str]:
    """A string that can name a row or a key: 1 to `max_length` characters, no control
    character, storable. What fails this cannot exist, so a lookup by it finds nothing."""
    return isinstance(value, str) and 0 < len(value) <= max_length \
        and CONTROL_RE.search(value) is None and storable(value)


def unstorable_at(value: object, path: tuple[str | int, ...] = ()
                  ) -> tuple[str | int, ...] | None:
    """The location of the first string (object key or value) in parsed JSON that
    `storable` refuses, or None."""
    if isinstance(value, str):
        return None if storable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not storable(key):
                return (*path, "(a key)")  # the key itself would not survive the answer
            found = unstorable_at(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_at(item, (*path, index))
            if found is not None:
                return found
    return None

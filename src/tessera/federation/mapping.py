"""Claim-mapping rules: from a verified external token's claims to an identity reference."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from tessera.federation.schemas import PLACEHOLDER

_SLUG = re.compile(r"[^a-z0-9._-]+")


def slug(value: str) -> str:
    """Make a claim value safe inside an identity name: `acme/web` -> `acme-web`."""
    return _SLUG.sub("-", value.lower()).strip("-.")[:128]


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value)
    return None


def _matches(value: str | None, cond: Any) -> bool:
    if value is None:
        return False
    if isinstance(cond, str):
        return value == cond
    if isinstance(cond, list):
        return value in cond
    if isinstance(cond, dict):
        return fnmatchcase(value, cond["glob"])
    return False


def render(template: str, claims: dict[str, Any]) -> str | None:
    """Fill `{claim}` placeholders with slugged claim values; None when one is missing."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        value = _claim(claims, m.group(1))
        if value is None or not slug(value):
            missing = True
            return ""
        return slug(value)

    out = PLACEHOLDER.sub(sub, template)
    return None if missing else out


def map_claims(rules: list[dict[str, Any]], claims: dict[str, Any]) -> str | None:
    """The first rule whose conditions all hold names the identity; None when none does."""
    for rule in rules:
        match = rule.get("match") or {}
        if not match:
            continue  # INVARIANT: a rule without conditions never matches.
        if all(_matches(_claim(claims, k), cond) for k, cond in match.items()):
            ref = render(str(rule.get("identity", "")), claims)
            if ref:
                return ref
    return None

"""Claim-mapping rules: from a verified external token's claims to an identity reference.

Matching is over the whole claim value, never part of it: a string condition is equality, a
list is membership, and a glob must cover the value from its first character to its last.
`{claim}` placeholders in the identity are filled by a one-to-one rewriting of the value (so
two different values never name the same identity); a value that cannot be rewritten that way
maps to nothing. The README's "Federation" section states these rules for administrators.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

# Unicode categories no claim used for mapping may contain: controls (Cc: NUL, CR, LF, TAB,
# DEL...), format characters (Cf: zero-width joiners, bidirectional overrides, BOM),
# surrogates (Cs: lone ones survive JSON decoding), private use (Co), unassigned (Cn), and the
# line and paragraph separators (Zl, Zp). No platform puts them in a subject, repository or
# ref; they only serve to make one value look like, or be cut down to, another.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

# A `{claim}` placeholder in an identity template.
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.:-]{1,64})\}")
# What a claim value may hold to be written into an identity name, and how it is written:
# lower-case ASCII letters, digits, `.` and `-` as they are, `/` as `_`. A one-to-one rewriting
# (`_` itself is not accepted), so two different values never give the same name. Nothing is
# lower-cased, stripped or truncated: a value outside this alphabet maps to nothing.
_NAME_VALUE = re.compile(r"[a-z0-9./-]+")
_IDENTITY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


class UnusableClaim(Exception):
    """A claim a mapping rule uses holds a refused character (message names the claim)."""


def has_refused_character(value: str) -> bool:
    return any(unicodedata.category(ch) in REFUSED_CATEGORIES for ch in value)


def claim_value(claims: dict[str, Any], name: str) -> str | None:
    """The claim as a string (a string, or an integer in decimal); None when absent or of
    another type. Raises UnusableClaim when it holds a refused character."""
    value = claims.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    if has_refused_character(value):
        raise UnusableClaim(f"claim {name!r} holds a control or format character")
    return value


def name_part(value: str) -> str | None:
    """`value` as it is written into an identity name, or None when it cannot be (one-to-one:
    `acme/web-app.v2` -> `acme_web-app.v2`; `Acme/web`, `acme/web_app`, `a b` -> None)."""
    if not _NAME_VALUE.fullmatch(value):
        return None
    return value.replace("/", "_")


@lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob for a full match: `*` any run of characters (`/` included, possibly
    none), `?` one character, `[abc]` / `[a-z]` / `[!abc]` one character in (not in) the set;
    every other character stands for itself. Raises ValueError on a malformed pattern."""
    if has_refused_character(pattern):
        raise ValueError("a glob must not contain control or format characters")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            negate = j < n and pattern[j] == "!"
            if negate:
                j += 1
            start = j
            if j < n and pattern[j] == "]":
                j += 1  # a `]` first in the set is a member, not the end
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                raise ValueError("unclosed [ in glob")
            body = pattern[start:j]
            i = j + 1
            members = "".join("-" if c == "-" and 0 < k < len(body) - 1 else re.escape(c)
                              for k, c in enumerate(body))
            out.append(f"[{'^' if negate else ''}{members}]")
        else:
            out.append(re.escape(ch))
    try:
        # DOTALL is moot (values with line breaks are refused before matching) but explicit.
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"malformed glob: {exc}") from exc


def _matches(value: str | None, cond: Any) -> bool:
    if value is None:
        return False
    if isinstance(cond, str):
        return value == cond
    if isinstance(cond, list):
        return value in cond
    if isinstance(cond, dict) and isinstance(cond.get("glob"), str):
        try:
            return glob_regex(cond["glob"]).fullmatch(value) is not None
        except ValueError:
            return False  # a malformed stored pattern matches nothing
    return False


def varying_claims(match: dict[str, Any], template: str) -> set[str]:
    """The template's claims that the rule does not pin to one exact value."""
    return {c for c in PLACEHOLDER.findall(template) if not isinstance(match.get(c), str)}


def render(template: str, claims: dict[str, Any]) -> str | None:
    """Fill `{claim}` placeholders with the claims' name parts; None when one is missing or
    cannot be written into a name, or when the result is not a valid identity reference."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        value = claim_value(claims, m.group(1))
        part = name_part(value) if value is not None else None
        if part is None:
            missing = True
            return ""
        return part

    out = PLACEHOLDER.sub(sub, template)
    if missing:
        return None
    _kind, _, name = out.rpartition("/")
    return out if _IDENTITY_NAME.fullmatch(name) else None


def used_claims(rules: Iterable[dict[str, Any]]) -> set[str]:
    """Every claim named by a rule's conditions or identity template."""
    names: set[str] = set()
    for rule in rules:
        names.update((rule.get("match") or {}).keys())
        names.update(PLACEHOLDER.findall(str(rule.get("identity", ""))))
    return names


def map_claims(rules: list[dict[str, Any]], claims: dict[str, Any]) -> str | None:
    """The first rule whose conditions all hold names the identity; None when none does.

    Raises UnusableClaim when any claim some rule uses holds a refused character: such a
    token is refused outright, whichever rule it would have met."""
    for name in sorted(used_claims(rules)):
        claim_value(claims, name)
    for rule in rules:
        match = rule.get("match") or {}
        if not match:
            continue  # INVARIANT: a rule without conditions never matches.
        template = str(rule.get("identity", ""))
        if len(varying_claims(match, template)) > 1:
            # INVARIANT: at most one placeholder varies, or `{a}-{b}` would give `x-y-z` for
            # both (a=x-y, b=z) and (a=x, b=y-z). Rules stored before this was checked at
            # registration are skipped here.
            continue
        if all(_matches(claim_value(claims, k), cond) for k, cond in match.items()):
            ref = render(template, claims)
            if ref:
                return ref
    return None

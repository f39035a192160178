"""Cedar policy sources: parse files once, keep each policy's id, scope, annotations and position.

Cedar's parser reports what is wrong but not where; this module finds the statement (and the
token) that fails so every error carries file, line and column.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy
from cedarpy import pst

from tessera.authz.errors import PolicyError, PolicyProblem

EOF_MESSAGE = "unexpected end of input"
ID_RE = re.compile(r"^[^\x00-\x1f]{1,200}$")
_TOKEN_RE = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+|::|==|!=|<=|>=|&&|'
                       r"\|\||\S")


@dataclass(frozen=True)
class Statement:
    """One `...;` statement of a file, with its 1-based position."""

    text: str
    offset: int
    line: int
    column: int


@dataclass(frozen=True)
class Policy:
    """One parsed static policy, ready to index and to hand to Cedar."""

    id: str
    effect: str
    file: str
    line: int
    column: int
    text: str
    annotations: Mapping[str, str]
    node: pst.Template
    # None means "any"; otherwise the set of entity type names / action uids the scope admits.
    principal_types: frozenset[str] | None
    actions: frozenset[tuple[str, str]] | None
    action_in: bool
    resource_types: frozenset[str] | None


@dataclass
class ParsedPolicies:
    policies: list[Policy] = field(default_factory=list)

    def by_id(self) -> dict[str, Policy]:
        return {p.id: p for p in self.policies}

    def action_names(self) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for p in self.policies:
            out |= set(p.actions or ())
            for uid in pst.entity_uids(p.node):
                if _type_name(uid.type) == "Action" or _type_name(uid.type).endswith("::Action"):
                    out.add((_type_name(uid.type), uid.id))
        return out

    def entity_types(self) -> set[str]:
        out: set[str] = set()
        for p in self.policies:
            out |= set(p.principal_types or ()) | set(p.resource_types or ())
            out |= {_type_name(u.type) for u in pst.entity_uids(p.node)}
        return out


def _type_name(t: pst.EntityType) -> str:
    return str(t)


def line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def split_statements(text: str) -> list[Statement]:
    """Split Cedar text at top-level `;` (outside strings and comments)."""
    out: list[Statement] = []
    i, n = 0, len(text)
    start: int | None = None
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if start is None and not ch.isspace():
            start = i
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if ch == ";":
            begin = i if start is None else start
            line, col = line_col(text, begin)
            out.append(Statement(text[begin:i + 1], begin, line, col))
            start = None
        i += 1
    if start is not None:
        line, col = line_col(text, start)
        out.append(Statement(text[start:].rstrip(), start, line, col))
    return out


def locate_error(text: str, stmt: Statement) -> tuple[int, int, str]:
    """Find the token in `stmt` where Cedar's parser first fails: (line, column, message)."""
    try:
        cedarpy.PolicySet.from_str(stmt.text)
        message = "unparsable policy"
    except ValueError as exc:
        message = str(exc)
    tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN_RE.finditer(stmt.text)
              if not m.group().startswith("//")]
    where = len(stmt.text.rstrip()) - 1 if stmt.text.strip() else 0
    for idx, (s, e, _tok) in enumerate(tokens):
        try:
            cedarpy.PolicySet.from_str(stmt.text[:e])
            continue
        except ValueError as exc:
            if str(exc) == EOF_MESSAGE:
                continue
            where = s
            # Semantic errors surface only at the end; point at the name they mention.
            named = (re.search(r"unexpected token `([^`]+)`", str(exc)) or
                     re.search(r"(?::\s*|`)([A-Za-z_][A-Za-z0-9_]*)`?\s*$", str(exc)))
            if named:
                for s2, _e2, tok2 in reversed(tokens[:idx + 1]):
                    if tok2 == named.group(1):
                        where = s2
                        break
            break
    line, col = line_col(text, stmt.offset + max(where, 0))
    return line, col, message


def _scope_types(c: Any) -> frozenset[str] | None:
    if isinstance(c, (pst.ScopeIs, pst.ScopeIsIn)):
        return frozenset({_type_name(c.entity_type)})
    if isinstance(c, pst.ScopeEq) and isinstance(c.entity, pst.EntityUid):
        return frozenset({_type_name(c.entity.type)})
    return None


def _scope_actions(c: Any) -> tuple[frozenset[tuple[str, str]] | None, bool]:
    if isinstance(c, pst.ActionEq):
        return frozenset({(_type_name(c.entity.type), c.entity.id)}), False
    if isinstance(c, pst.ActionIn):
        return frozenset((_type_name(u.type), u.id) for u in c.entities), True
    return None, False


def parse_file(name: str, text: str) -> list[Policy]:
    """Parse one file; raise PolicyError with file/line/column on any problem."""
    stmts = split_statements(text)
    try:
        parsed = cedarpy.PolicySet.from_str(text).to_pst() if stmts else None
    except ValueError:
        problems = []
        for stmt in stmts:
            try:
                cedarpy.PolicySet.from_str(stmt.text)
            except ValueError:
                line, col, msg = locate_error(text, stmt)
                problems.append(PolicyProblem(name, line, col, msg))
        if not problems:  # the file fails as a whole only (should not happen)
            problems.append(PolicyProblem(name, 1, 1, "the file does not parse"))
        raise PolicyError(problems) from None
    if parsed is None:
        return []
    if parsed.templates:
        first = next(iter(parsed.templates))
        stmt = stmts[int(first.removeprefix("policy"))] if first.startswith("policy") else stmts[0]
        raise PolicyError([PolicyProblem(name, stmt.line, stmt.column,
                                         "policy templates (?principal/?resource) are not "
                                         "supported")])
    out: list[Policy] = []
    for pid, node in parsed.static_policies.items():
        n = int(pid.removeprefix("policy"))
        stmt = stmts[n] if n < len(stmts) else Statement("", 0, 1, 1)
        given = node.annotations.get("id")
        new_id = given if given else f"{name}#{n}"
        if not ID_RE.match(new_id):
            raise PolicyError([PolicyProblem(name, stmt.line, stmt.column,
                                             f"invalid @id {new_id!r}")])
        actions, action_in = _scope_actions(node.action)
        out.append(Policy(
            id=new_id, effect=node.effect, file=name, line=stmt.line, column=stmt.column,
            text=stmt.text, annotations=dict(node.annotations),
            node=dataclasses.replace(node, id=new_id),
            principal_types=_scope_types(node.principal), actions=actions, action_in=action_in,
            resource_types=_scope_types(node.resource)))
    return out


def parse_files(files: Mapping[str, str]) -> ParsedPolicies:
    """Parse a set of files (name -> text); ids must be unique across them."""
    problems: list[PolicyProblem] = []
    result = ParsedPolicies()
    seen: dict[str, Policy] = {}
    for name in sorted(files):
        try:
            policies = parse_file(name, files[name])
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        for p in policies:
            if p.id in seen:
                problems.append(PolicyProblem(p.file, p.line, p.column,
                                              f"duplicate policy id {p.id!r} (first in "
                                              f"{seen[p.id].file}:{seen[p.id].line})"))
                continue
            seen[p.id] = p
            result.policies.append(p)
    if problems:
        raise PolicyError(problems)
    return result


def build_policy_set(policies: list[Policy]) -> cedarpy.PolicySet:
    """A prepared Cedar PolicySet of exactly these policies, under their own ids."""
    node = pst.PolicySet(templates={}, static_policies={p.id: p.node for p in policies},
                         template_links=())
    return cedarpy.PolicySet.from_pst(node)


def format_text(text: str, name: str = "<input>") -> str:
    """Cedar's formatter; raises PolicyError with a location when the text does not parse."""
    parse_file(name, text)
    try:
        return cedarpy.format_policies(text, 100, 2)
    except ValueError as exc:
        raise PolicyError([PolicyProblem(name, 1, 1, str(exc))]) from exc

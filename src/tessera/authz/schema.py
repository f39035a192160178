"""Cedar schema generation (from identity kinds, the catalog and imported entities, plus
user-supplied fragments) and policy validation against it, with file/line/column errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import cedarpy

from tessera.authz.engine import ACTION_TYPE, ROLE_TYPE, TYPE_BY_KIND
from tessera.authz.errors import PolicyError, PolicyProblem
from tessera.authz.policies import ParsedPolicies, split_statements

IDENTITY_ATTRS = {"kind": "String", "name": "String", "status": "String", "purpose": "String",
                  "spiffe_id": "String", "owner": "User"}
CATALOG_TYPES = ("Dataset", "Tool", "Api", "Model")
CATALOG_ATTRS = {"classification": "String", "data_classes": "Set<String>", "owner": "String",
                 "impact_level": "String", "name": "String", "description": "String"}
CONTEXT_TYPE = ("type Context = { hour: Long, weekday: String, timestamp: Long, "
                "source_ip: String, risk: Long, risk_score: Long, principal_status: String };")
_DECL_RE = re.compile(r"\bentity\s+([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)")
_ACTION_RE = re.compile(r'\baction\s+((?:"(?:\\.|[^"\\])*"|[A-Za-z_]\w*)(?:\s*,\s*(?:"(?:\\.|'
                        r'[^"\\])*"|[A-Za-z_]\w*))*)')
_TYPE_RE = re.compile(r"\btype\s+([A-Za-z_]\w*)\s*=")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _q(name: str) -> str:
    return name if _IDENT_RE.match(name) else json.dumps(name)


def infer_type(value: Any, depth: int = 0) -> str | None:
    """The Cedar schema type of a JSON attribute value, or None if it has no single type."""
    if depth > 8:
        return None
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Long"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        kinds = {infer_type(v, depth + 1) for v in value}
        if len(kinds) == 1 and None not in kinds:
            return f"Set<{kinds.pop()}>"
        return None
    if isinstance(value, dict):
        if set(value) == {"__entity"} and isinstance(value["__entity"], dict):
            return str(value["__entity"].get("type")) or None
        if "__extn" in value:
            return None
        fields = []
        for k, v in sorted(value.items()):
            t = infer_type(v, depth + 1)
            if t is not None:
                fields.append(f"{_q(str(k))}?: {t}")
        return "{ " + ", ".join(fields) + " }"
    return None


def merge_attrs(samples: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Attribute name -> type across entities; names seen with conflicting types are dropped."""
    seen: dict[str, str | None] = {}
    for attrs in samples:
        for k, v in attrs.items():
            t = infer_type(v)
            if k in seen and seen[k] != t:
                seen[k] = None
            elif k not in seen:
                seen[k] = t
    return {k: t for k, t in seen.items() if t is not None}


def declared_names(fragment: str) -> tuple[set[str], set[str], set[str]]:
    """Entity types, action names and common types a fragment declares itself."""
    entities = {n.strip() for m in _DECL_RE.finditer(fragment) for n in m.group(1).split(",")}
    actions: set[str] = set()
    for m in _ACTION_RE.finditer(fragment):
        for part in re.findall(r'"(?:\\.|[^"\\])*"|[A-Za-z_]\w*', m.group(1)):
            actions.add(json.loads(part) if part.startswith('"') else part)
    types = set(_TYPE_RE.findall(fragment))
    return entities, actions, types


def generate_schema(*, identity_attrs: Iterable[Mapping[str, Any]],
                    entities: Iterable[Mapping[str, Any]], policies: ParsedPolicies | None,
                    fragment: str | None = None) -> str:
    """Cedar schema text for the registry, the catalog and the policies' actions."""
    fragment = fragment or ""
    own_entities, own_actions, own_types = declared_names(fragment)
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    parents_of: dict[str, set[str]] = {}
    for ent in entities:
        t = ent["uid"]["type"]
        if t == ACTION_TYPE:
            continue
        by_type.setdefault(t, []).append(ent.get("attrs", {}))
        parents_of.setdefault(t, set()).update(p["type"] for p in ent.get("parents", ()))
    custom = merge_attrs(identity_attrs)
    lines: list[str] = []
    types: list[str] = []

    def declare(name: str, attrs: dict[str, str], required: set[str],
                parents: set[str]) -> None:
        types.append(name)
        if name in own_entities:
            return
        body = ", ".join(f"{_q(k)}{'' if k in required else '?'}: {t}"
                         for k, t in sorted(attrs.items()))
        within = f" in [{', '.join(sorted(parents))}]" if parents else ""
        lines.append(f"entity {name}{within} {{ {body} }};")

    declare(ROLE_TYPE, {}, set(), parents_of.get(ROLE_TYPE, set()) & {ROLE_TYPE})
    for type_name in TYPE_BY_KIND.values():
        attrs = {**custom, **IDENTITY_ATTRS}
        required = set(IDENTITY_ATTRS) - {"owner"}
        if type_name in by_type or type_name in CATALOG_TYPES:
            attrs = {**merge_attrs(by_type.get(type_name, ())), **CATALOG_ATTRS, **attrs}
            required = set()
        declare(type_name, attrs, required,
                {ROLE_TYPE} | parents_of.get(type_name, set()))
    for type_name in sorted(set(CATALOG_TYPES) | set(by_type)):
        if type_name in TYPE_BY_KIND.values() or type_name == ROLE_TYPE:
            continue
        attrs = merge_attrs(by_type.get(type_name, ()))
        if type_name in CATALOG_TYPES:
            attrs.update(CATALOG_ATTRS)
        declare(type_name, attrs, set(), parents_of.get(type_name, set()))
    if "Context" not in own_types:
        lines.append(CONTEXT_TYPE)
    all_types = ", ".join(sorted(set(types) | own_entities))
    names = {a for t, a in (policies.action_names() if policies else set()) if t == ACTION_TYPE}
    for action in sorted(names - own_actions):
        lines.append(f"action {json.dumps(action)} appliesTo {{ principal: [{all_types}], "
                     f"resource: [{all_types}], context: Context }};")
    return "\n".join(lines) + ("\n" + fragment if fragment else "") + "\n"


def parse_schema(text: str) -> Any:
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        raise PolicyError([PolicyProblem("<schema>", 1, 1, f"the schema does not parse: {exc}")]
                          ) from exc


def validate(files: Mapping[str, str], schema_text: str) -> None:
    """Validate each file's policies against the schema; PolicyError with locations."""
    schema = parse_schema(schema_text)
    problems: list[PolicyProblem] = []
    for name in sorted(files):
        text = files[name]
        if not text.strip():
            continue
        result = cedarpy.validate_policies(text, schema)
        if result.validation_passed:
            continue
        stmts = split_statements(text)
        for err in result.errors:
            line, col = 1, 1
            if err.policy_id.startswith("policy") and err.policy_id[6:].isdigit():
                n = int(err.policy_id[6:])
                if n < len(stmts):
                    line, col = stmts[n].line, stmts[n].column
            message = re.sub(r"^for policy `policy\d+`, ", "", err.error)
            problems.append(PolicyProblem(name, line, col, message))
    if problems:
        raise PolicyError(problems)

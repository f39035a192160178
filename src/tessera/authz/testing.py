"""Policy tests (`tessera policy test DIR`, like `opa test`): YAML or JSON cases run against the
policies in a directory, through the same engine the server uses.

A test file holds shared `entities` (Cedar JSON; identities of type Agent, User, Model, Pipeline
or Service become registered principals, their `status` honoured) and `cases`, each with a
`request` (principal, action, resource, context, optional `time` and `env`) and an `expect`
(decision allow/deny, optionally obligations and determining policies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tessera.authz.engine import (
    ACTION_TYPE,
    KIND_BY_TYPE,
    ROLE_TYPE,
    Decision,
    EvalRequest,
    IdentityRecord,
    Snapshot,
    SnapshotSource,
)
from tessera.authz.errors import PolicyError, PolicyProblem
from tessera.authz.policies import parse_files
from tessera.authz.schema import validate

DEFAULT_TIME = "2026-01-05T10:00:00Z"  # a Monday, mid-morning UTC
SCHEMA_FILE = "schema.cedarschema"


class _FixedRisk:
    def __init__(self, score: int) -> None:
        self._score = score

    def score(self, principal_id: str) -> int:
        return self._score


@dataclass
class CaseResult:
    file: str
    name: str
    passed: bool
    expected: dict[str, Any]
    decision: Decision | None
    problem: str = ""


@dataclass
class TestReport:
    results: list[CaseResult] = field(default_factory=list)
    problems: list[PolicyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]


def load_policies(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text()
            for p in sorted(directory.rglob("*.cedar")) if "tests" not in p.parts[-2:-1]}


def _uid(value: Any, default_type: str | None = None) -> tuple[str, str]:
    if isinstance(value, dict):
        return str(value["type"]), str(value["id"])
    text = str(value)
    if "::" in text and text.endswith('"'):
        t, _, rest = text.rpartition("::")
        return t, json.loads(rest)
    if default_type:
        return default_type, text
    raise ValueError(f"cannot read entity uid {value!r}; use {{type, id}} or Type::\"id\"")


def _source(policies: Any, entities: list[dict[str, Any]], risk: int) -> Snapshot:
    identities: dict[str, IdentityRecord] = {}
    others: dict[tuple[str, str], dict[str, Any]] = {}
    for ent in entities:
        t, i = ent["uid"]["type"], ent["uid"]["id"]
        attrs = dict(ent.get("attrs", {}))
        if t in KIND_BY_TYPE:
            roles = tuple(p["id"] for p in ent.get("parents", ()) if p["type"] == ROLE_TYPE)
            owner = attrs.pop("owner", None)
            if isinstance(owner, dict):
                owner = owner.get("__entity", {}).get("id")
            identities[i] = IdentityRecord(
                id=i, kind=KIND_BY_TYPE[t], name=str(attrs.pop("name", i)),
                status=str(attrs.pop("status", "active")), owner=owner,
                purpose=str(attrs.pop("purpose", "")), attributes=attrs, expires_at=None,
                roles=roles, spiffe_id=f"spiffe://test/{KIND_BY_TYPE[t]}/{i}")
            for r in roles:
                others.setdefault((ROLE_TYPE, r), {"uid": {"type": ROLE_TYPE, "id": r},
                                                   "attrs": {}, "parents": []})
        else:
            others[(t, i)] = {"uid": {"type": t, "id": i}, "attrs": attrs,
                              "parents": list(ent.get("parents", ()))}
    src = SnapshotSource(version=0, policy_version=None, policies=policies,
                         identities=identities, entities=others)
    return Snapshot(src, _FixedRisk(risk))


def _check(expect: dict[str, Any], d: Decision) -> str:
    want = str(expect.get("decision", "")).lower()
    if want not in ("allow", "deny"):
        return "expect.decision must be allow or deny"
    if (want == "allow") != d.allowed:
        return f"expected {want}, got {'allow' if d.allowed else 'deny'}"
    if "obligations" in expect:
        got = [{k: v for k, v in o.items() if k != "policy"} for o in d.obligations]
        if got != list(expect["obligations"] or []):
            return f"expected obligations {expect['obligations']}, got {got}"
    if "policies" in expect and sorted(expect["policies"] or []) != sorted(d.policies):
        return f"expected determining policies {expect['policies']}, got {d.policies}"
    return ""


def run_file(path: Path, policies: Any) -> list[CaseResult]:
    text = path.read_text()
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        return [CaseResult(path.name, "<file>", False, {}, None,
                           "a test file needs a `cases` list")]
    shared = list(doc.get("entities") or [])
    out: list[CaseResult] = []
    for n, case in enumerate(doc["cases"]):
        name = str(case.get("name", f"case {n + 1}"))
        expect = dict(case.get("expect") or {})
        try:
            req = case["request"]
            env: dict[str, Any] = dict(req.get("env") or {})
            snap = _source(policies, shared + list(case.get("entities") or []),
                           int(env.get("risk", env.get("risk_score", 0))))
            action = req["action"]
            when = datetime.fromisoformat(str(req.get("time", DEFAULT_TIME))).astimezone(UTC)
            ereq = EvalRequest(
                principal=_uid(req["principal"]),
                action=_uid(action, ACTION_TYPE) if not isinstance(action, str) or "::" in
                action else (ACTION_TYPE, action),
                resource=_uid(req["resource"]), context=dict(req.get("context") or {}),
                principal_properties=req.get("principal_properties"),
                resource_properties=req.get("resource_properties"),
                source=env.get("source_ip"))
            decision = snap.evaluate(ereq, when)
        except (KeyError, ValueError, TypeError) as exc:
            out.append(CaseResult(path.name, name, False, expect, None,
                                  f"malformed case: {exc}"))
            continue
        problem = _check(expect, decision)
        out.append(CaseResult(path.name, name, not problem, expect, decision, problem))
    return out


def run(directory: Path) -> TestReport:
    """Parse (and validate, when DIR has schema.cedarschema) the policies; run every case."""
    report = TestReport()
    files = load_policies(directory)
    try:
        parsed = parse_files(files)
        schema = directory / SCHEMA_FILE
        if schema.exists():
            validate(files, schema.read_text())
    except PolicyError as exc:
        report.problems = exc.problems
        return report
    test_files = sorted(p for p in directory.rglob("*")
                        if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
    for path in test_files:
        report.results.extend(run_file(path, parsed))
    return report


def format_failure(r: CaseResult) -> str:
    lines = [f"FAIL {r.file}: {r.name}", f"  {r.problem}", f"  expected: {r.expected}"]
    if r.decision is not None:
        lines.append(f"  decision: {'allow' if r.decision.allowed else 'deny'}; "
                     f"determining policies: {r.decision.policies or '-'}; "
                     f"reasons: {r.decision.reasons}; obligations: {r.decision.obligations}")
        if r.decision.errors:
            lines.append(f"  errors: {r.decision.errors}")
    return "\n".join(lines)

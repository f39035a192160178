"""The Cedar engine, policy parsing with locations, obligations, schema validation, the test
runner and the example library (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.authz.engine import EvalRequest, IdentityRecord, Snapshot, SnapshotSource
from tessera.authz.errors import PolicyError
from tessera.authz.policies import format_text, parse_files
from tessera.authz.schema import generate_schema, validate
from tessera.authz.testing import run
from tessera.cli.main import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

POLICIES = """
@id("read-public")
permit (principal is Agent, action == Action::"read", resource is Dataset)
when { resource.classification == "public" };

@id("pii-masked")
@mask("ssn, email")
@reason("PII is masked")
permit (principal in Role::"analyst", action == Action::"read", resource is Dataset)
when { resource.classification == "internal" };

@id("no-delete")
@approval("dba")
@reason("deletes need a DBA")
forbid (principal, action == Action::"delete", resource);

@id("tool-only")
permit (principal, action == Action::"call", resource is Tool);
"""


def agent(ident: str, status: str = "active", roles: tuple[str, ...] = (),
          expires_at: float | None = None, **attrs: object) -> IdentityRecord:
    return IdentityRecord(ident, "agent", f"name-{ident}", status, None, "", attrs, expires_at,
                          roles, f"spiffe://t/agent/{ident}")


def snapshot(text: str = POLICIES, **idents: IdentityRecord) -> Snapshot:
    ents = {("Dataset", "pub"): {"uid": {"type": "Dataset", "id": "pub"},
                                 "attrs": {"classification": "public"}, "parents": []},
            ("Dataset", "int"): {"uid": {"type": "Dataset", "id": "int"},
                                 "attrs": {"classification": "internal"}, "parents": []},
            ("Role", "analyst"): {"uid": {"type": "Role", "id": "analyst"}, "attrs": {},
                                  "parents": []}}
    records = {r.id: r for r in idents.values()} or {"a1": agent("a1", roles=("analyst",))}
    return Snapshot(SnapshotSource(1, 7, parse_files({"p.cedar": text}), records, ents))


def ask(snap: Snapshot, principal: str, action: str, resource: tuple[str, str],
        **kw: object) -> object:
    return snap.evaluate(EvalRequest(("Agent", principal), ("Action", action), resource,
                                     **kw), NOW)  # type: ignore[arg-type]


def test_permit_carries_determining_policies_and_version() -> None:
    d = ask(snapshot(), "a1", "read", ("Dataset", "pub"))
    assert d.allowed and d.policies == ["read-public"] and d.policy_version == 7


def test_mask_annotation_becomes_an_obligation_with_its_reason() -> None:
    d = ask(snapshot(), "a1", "read", ("Dataset", "int"))
    assert d.allowed
    assert d.obligations == [{"type": "mask", "fields": ["ssn", "email"],
                              "policy": "pii-masked"}]
    assert d.reasons == ["PII is masked"]


def test_approval_on_a_forbid_becomes_an_approval_obligation() -> None:
    d = ask(snapshot(), "a1", "delete", ("Dataset", "pub"))
    assert not d.allowed and d.policies == ["no-delete"]
    assert d.obligations[0]["type"] == "approval" and d.obligations[0]["group"] == "dba"


@pytest.mark.parametrize("record,reason", [
    (agent("a1", status="suspended"), "subject is suspended"),
    (agent("a1", status="decommissioned"), "subject is decommissioned"),
    (agent("a1", expires_at=NOW.timestamp() - 1), "subject has expired"),
])
def test_inactive_principal_is_denied_whatever_the_policies_say(record: IdentityRecord,
                                                                 reason: str) -> None:
    snap = snapshot("permit (principal, action, resource);", a1=record)
    d = ask(snap, "a1", "read", ("Dataset", "pub"))
    assert not d.allowed and d.reasons == [reason]


def test_unknown_subject_is_a_deny_with_a_reason() -> None:
    d = ask(snapshot("permit (principal, action, resource);"), "nobody", "read",
            ("Dataset", "pub"))
    assert not d.allowed and d.reasons == ["unknown subject"]


def test_request_properties_cannot_override_registry_attributes() -> None:
    snap = snapshot('permit (principal, action, resource) when { principal.status == "x" || '
                    '(principal has clearance && principal.clearance == "top") };',
                    a1=agent("a1"))
    d = ask(snap, "a1", "read", ("Dataset", "pub"),
            principal_properties={"status": "x", "clearance": "top"})
    # status comes from the registry (active); clearance is new, so the request adds it.
    assert d.allowed
    d2 = ask(snap, "a1", "read", ("Dataset", "pub"), principal_properties={"status": "x"})
    assert not d2.allowed


def test_index_hands_cedar_only_policies_whose_scope_can_match() -> None:
    snap = snapshot()
    _ps, ids = snap.policy_set("Agent", ("Action", "read"), "Dataset")
    assert set(ids) == {"read-public", "pii-masked"}
    _ps, ids = snap.policy_set("Agent", ("Action", "call"), "Dataset")
    assert ids == ()
    d = ask(snap, "a1", "call", ("Dataset", "pub"))
    assert not d.allowed and d.reasons == ["no policy applies to this request"]


def test_context_is_enriched_with_time_source_risk_and_status() -> None:
    snap = snapshot('permit (principal, action, resource) when { context.hour == 10 && '
                    'context.weekday == "mon" && context.source_ip == "10.0.0.1" && '
                    'context.risk_score == 0 && context.principal_status == "active" };')
    assert ask(snap, "a1", "read", ("Dataset", "pub"), source="10.0.0.1").allowed


def test_shared_context_string_follows_source_and_time() -> None:
    """Consecutive decisions reuse the context JSON only when every input to it is equal:
    another source address or another instant is evaluated afresh."""
    snap = snapshot('permit (principal, action, resource) when { context.source_ip == '
                    '"10.0.0.1" && context.hour == 10 };')
    assert ask(snap, "a1", "read", ("Dataset", "pub"), source="10.0.0.1").allowed
    assert not ask(snap, "a1", "read", ("Dataset", "pub"), source="10.0.0.2").allowed
    assert ask(snap, "a1", "read", ("Dataset", "pub"), source="10.0.0.1").allowed
    later = NOW.replace(hour=11)
    assert not snap.evaluate(EvalRequest(("Agent", "a1"), ("Action", "read"), ("Dataset", "pub"),
                                         source="10.0.0.1"), later).allowed


def test_caller_context_cannot_override_enrichment() -> None:
    snap = snapshot('permit (principal, action, resource) when { context.risk_score == 0 };')
    d = ask(snap, "a1", "read", ("Dataset", "pub"), context={"risk_score": 99})
    assert d.allowed


def test_rejects_unparsable_policy_with_file_line_and_column() -> None:
    text = 'permit (principal, action, resource);\n\npermit (principal,\n  action ==, resource);'
    with pytest.raises(PolicyError) as exc:
        parse_files({"bad.cedar": text})
    prob = exc.value.problems[0]
    assert (prob.file, prob.line, prob.column) == ("bad.cedar", 4, 12)
    assert "unexpected token" in prob.message


def test_rejects_unknown_variable_pointing_at_it() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_files({"x.cedar": "permit (principal, action, resource)\nwhen { nope };"})
    prob = exc.value.problems[0]
    assert (prob.line, prob.column) == (2, 8) and "nope" in prob.message


def test_rejects_duplicate_ids_and_templates() -> None:
    dup = '@id("a") permit (principal, action, resource);'
    with pytest.raises(PolicyError, match="duplicate policy id"):
        parse_files({"a.cedar": dup, "b.cedar": dup})
    with pytest.raises(PolicyError, match="templates"):
        parse_files({"t.cedar": "permit (principal == ?principal, action, resource);"})


def test_schema_validation_reports_the_failing_policy_location() -> None:
    files = {"ok.cedar": 'permit (principal is Agent, action == Action::"read", resource);',
             "bad.cedar": '\n\npermit (principal is Agnet, action == Action::"read", resource);'}
    schema = generate_schema(identity_attrs=[], entities=[], policies=parse_files(files))
    with pytest.raises(PolicyError) as exc:
        validate(files, schema)
    prob = exc.value.problems[0]
    assert (prob.file, prob.line, prob.column) == ("bad.cedar", 3, 1)
    assert "Agnet" in prob.message


def test_fmt_formats_and_refuses_broken_text() -> None:
    assert "permit (principal, action, resource);" in format_text(
        "permit(principal,action,resource);")
    with pytest.raises(PolicyError):
        format_text("permit(principal,")


def test_example_library_tests_pass() -> None:
    report = run(EXAMPLES)
    assert report.problems == []
    assert report.results and all(r.passed for r in report.results), [
        (r.name, r.problem) for r in report.failed]


def test_policy_test_command_fails_a_ci_gate_on_a_wrong_expectation(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text('permit (principal, action == Action::"read", resource);')
    (tmp_path / "cases.yaml").write_text(
        "entities: [{uid: {type: User, id: u}}]\n"
        "cases:\n"
        "  - name: reads\n"
        "    request: {principal: User::\"u\", action: read, resource: Doc::\"d\"}\n"
        "    expect: {decision: allow}\n"
        "  - name: wrongly expects a write\n"
        "    request: {principal: User::\"u\", action: write, resource: Doc::\"d\"}\n"
        "    expect: {decision: allow}\n")
    result = CliRunner().invoke(app, ["policy", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL cases.yaml: wrongly expects a write" in result.output
    assert "1/2 cases passed" in result.output


def test_policy_test_command_passes_on_the_examples() -> None:
    result = CliRunner().invoke(app, ["policy", "test", str(EXAMPLES)])
    assert result.exit_code == 0, result.output

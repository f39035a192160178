"""Tampering with raw audit rows is found and named by verify (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tessera.audit.chain import chain_hash, hashed_part
from tessera.audit.export import verify_lines, write_export
from tessera.audit.models import AuditEventRow
from tessera.audit.service import row_dict
from tessera.container import Services


def fill(services: Services, n: int, every: int = 5) -> None:
    services.audit.options.checkpoint_every = every
    for i in range(n):
        with services.sessions() as s:
            services.audit.record(s, "test.thing.done", actor="idn_a", subject=f"idn_{i}",
                                  resource=f"res:{i}", data={"i": i})
            s.commit()


def raw(services: Services, sql: str, **params: Any) -> None:
    """Write as an attacker with database access would (triggers disabled on PostgreSQL)."""
    with services.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(sql), params)


def verify(services: Services) -> Any:
    with services.sessions() as s:
        return services.audit.verify(s, jwks=services.keys.jwks())


def problems(report: Any) -> list[tuple[int, str]]:
    return [(p["seq"], p["problem"]) for p in report.problems]


def test_intact_chain_verifies_with_its_signed_checkpoints(services: Services) -> None:
    fill(services, 12)
    report = verify(services)
    assert report.ok, report.problems
    assert report.checked == 12
    assert report.checkpoints == 2  # at 5 and 10


def test_changed_field_is_named_modified(services: Services) -> None:
    fill(services, 12)
    raw(services, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 7")
    assert problems(verify(services)) == [(7, "modified")]


def test_changed_and_rehashed_event_is_named_modified(services: Services) -> None:
    fill(services, 12)
    with services.sessions() as s:
        rec = row_dict(s.get_one(AuditEventRow, 7))
    rec["resource"] = "res:forged"
    raw(services, "UPDATE audit_events SET resource = 'res:forged', hash = :h WHERE seq = 7",
        h=chain_hash(rec["prev_hash"], hashed_part(rec)))
    assert problems(verify(services)) == [(7, "modified")]


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(services: Services) -> None:
    fill(services, 12)
    with services.sessions() as s:
        recs = [row_dict(r) for r in s.query(AuditEventRow).order_by(AuditEventRow.seq)]
    prev = recs[5]["hash"]  # rewrite events 7..12 consistently, and the head
    for rec in recs[6:]:
        if rec["seq"] == 7:
            rec["resource"] = "res:forged"
        rec["prev_hash"] = prev
        rec["hash"] = prev = chain_hash(prev, hashed_part(rec))
        raw(services, "UPDATE audit_events SET resource = :r, prev_hash = :p, hash = :h "
                      "WHERE seq = :s", r=rec["resource"], p=rec["prev_hash"], h=rec["hash"],
            s=rec["seq"])
    raw(services, "UPDATE audit_head SET hash = :h", h=prev)
    assert problems(verify(services)) == [(10, "modified")]
    assert "checkpoint" in verify(services).problems[0]["detail"]


def test_deleted_event_is_named_deleted(services: Services) -> None:
    fill(services, 12)
    raw(services, "DELETE FROM audit_events WHERE seq = 4")
    assert problems(verify(services)) == [(4, "deleted")]


def test_deleted_tail_is_named_deleted(services: Services) -> None:
    fill(services, 12)
    raw(services, "DELETE FROM audit_events WHERE seq > 10")
    assert problems(verify(services)) == [(11, "deleted")]


def test_inserted_event_is_named_inserted(services: Services) -> None:
    fill(services, 6)
    with services.sessions() as s:
        rec = row_dict(s.get_one(AuditEventRow, 6))
    forged = {**rec, "seq": 7, "id": "evt_forged", "prev_hash": rec["hash"],
              "resource": "res:forged"}
    forged["hash"] = chain_hash(rec["hash"], hashed_part(forged))
    raw(services, "INSERT INTO audit_events (seq, id, ts, type, actor, subject, action, "
                  "resource, outcome, reasons, request_id, source, node_id, data, prev_hash, hash)"
                  " SELECT 7, 'evt_forged', ts, type, actor, subject, action, 'res:forged', "
                  "outcome, reasons, request_id, source, node_id, data, :p, :h FROM audit_events"
                  " WHERE seq = 6", p=forged["prev_hash"], h=forged["hash"])
    assert problems(verify(services)) == [(7, "inserted")]


def test_swapped_events_are_named_reordered(services: Services) -> None:
    fill(services, 12)
    raw(services, "UPDATE audit_events SET seq = 1000 WHERE seq = 3")
    raw(services, "UPDATE audit_events SET seq = 3 WHERE seq = 4")
    raw(services, "UPDATE audit_events SET seq = 4 WHERE seq = 1000")
    report = verify(services)
    assert problems(report) == [(3, "reordered"), (4, "reordered")]
    assert "written as number 4" in report.problems[0]["detail"]


def test_every_tampering_is_reported_not_only_the_first(services: Services) -> None:
    fill(services, 12)
    raw(services, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 2")
    raw(services, "DELETE FROM audit_events WHERE seq = 8")
    assert problems(verify(services)) == [(2, "modified"), (8, "deleted")]


# -- exports ----------------------------------------------------------------------------------

def export(services: Services) -> list[str]:
    buf = io.StringIO()
    with services.sessions() as s:
        services.audit.checkpoint(s)
        s.commit()
        write_export(s, services.clock, services.keys.jwks(), buf)
    return buf.getvalue().splitlines()


def test_export_verifies_offline_with_only_the_jwks(services: Services) -> None:
    fill(services, 12)
    lines = export(services)
    jwks = services.keys.jwks()
    services.close()  # no database from here on
    report = verify_lines(lines, jwks=jwks)
    assert report.ok, report.problems
    assert report.checked == 12 and report.checkpoints == 3


def test_export_signed_by_another_key_is_rejected(services: Services) -> None:
    from joserfc.jwk import ECKey

    fill(services, 6)
    lines = export(services)
    other = {"keys": [ECKey.generate_key("P-256").as_dict(private=False) |
                      {"kid": json.loads(lines[0])["jwks"]["keys"][0]["kid"]}]}
    assert "checkpoint_invalid" in verify_lines(lines, jwks=other).kinds()


@pytest.mark.parametrize("tamper, expected", [
    ("swap", [(3, "reordered")]),
    ("delete", [(4, "deleted")]),
    ("modify", [(4, "modified")]),
    ("insert", [(4, "inserted")]),
])
def test_tampered_export_is_named(services: Services, tamper: str,
                                  expected: list[tuple[int, str]]) -> None:
    fill(services, 8, every=100)
    lines = export(services)
    idx = {json.loads(line).get("seq"): i for i, line in enumerate(lines)
           if json.loads(line)["kind"] == "event"}
    if tamper == "swap":
        lines[idx[3]], lines[idx[4]] = lines[idx[4]], lines[idx[3]]
    elif tamper == "delete":
        del lines[idx[4]]
    elif tamper == "modify":
        rec = json.loads(lines[idx[4]])
        rec["outcome"] = "failure"
        lines[idx[4]] = json.dumps(rec)
    else:
        rec = json.loads(lines[idx[3]])
        forged = {**rec, "seq": 4, "id": "evt_forged", "prev_hash": rec["hash"]}
        forged["hash"] = chain_hash(rec["hash"], hashed_part(forged))
        lines.insert(idx[4] + 1, json.dumps(forged))
    assert problems(verify_lines(lines)) == expected


# -- database protections and retention -------------------------------------------------------

def test_postgres_trigger_refuses_update_and_delete(services: Services) -> None:
    if services.engine.dialect.name != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    fill(services, 6)
    for sql in ("UPDATE audit_events SET outcome = 'failure' WHERE seq = 2",
                "DELETE FROM audit_events WHERE seq = 2",
                "DELETE FROM audit_checkpoints"):
        with pytest.raises(DBAPIError, match="append-only"), services.engine.begin() as conn:
            conn.execute(text(sql))
    assert verify(services).ok


def test_retention_keeps_a_verifiable_chain_from_its_checkpoint(services: Services) -> None:
    fill(services, 7)  # checkpoint at 5
    services.clock.advance(3600)
    fill(services, 3)
    with services.sessions() as s:
        result = services.audit.apply_retention(s, services.clock.now(), actor="idn_admin")
        s.commit()
    # Events 8-10 are not older than `before`, so the newest checkpoint that may go is 5.
    assert result == {"base_seq": 5, "deleted": 5, "before": result["before"]}
    report = verify(services)
    assert report.ok, report.problems
    assert report.base_seq == 5 and report.checked == 6
    with services.sessions() as s:
        last = services.audit.events(s, after=0)[-1]
    assert last.type == "audit.retention.applied" and last.actor == "idn_admin"
    assert verify_lines(export(services)).ok


def test_retention_without_a_checkpoint_is_refused(services: Services) -> None:
    from tessera.errors import Conflict

    fill(services, 3, every=100)
    with services.sessions() as s, pytest.raises(Conflict):
        services.audit.apply_retention(s, services.clock.now(), actor="idn_admin")

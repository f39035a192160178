"""The chain's canonical encoding is pinned, and events read back exactly as they were hashed,
whichever way their columns were encoded when they were written (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from tessera.audit import RequestContext
from tessera.audit.chain import GENESIS, canonical, chain_hash, hashed_part, ts_text
from tessera.audit.groupcommit import WriteUnit
from tessera.audit.models import AuditEventRow, AuditHeadRow
from tessera.audit.service import DATA_JSON, event_dict
from tessera.clock import FakeClock
from tessera.container import Services

RECORD: dict[str, Any] = {
    "seq": 42, "id": "evt_00112233445566778899", "ts": "2024-05-06T07:08:09.010203Z",
    "type": "oauth.token.issued", "actor": "idn_a", "subject": "idn_é",
    "action": "client_credentials", "resource": "https://tessera.test/oauth2/token",
    "outcome": "success", "reasons": ['r"1', "ü"], "request_id": "req-1",
    "source": "127.0.0.1", "node_id": "node-1",
    "data": {"scope": "read", "exp": 1714979289, "jti": "j\n1",
             "nested": {"b": [1, 2.5, None, True], "a": "日本"},
             "when": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)}}
# Written by the encoding every stored chain was hashed with: changing a byte of it breaks
# every existing log's verification.
CANONICAL = (
    '{"action":"client_credentials","actor":"idn_a","data":{"exp":1714979289,"jti":"j\\n1",'
    '"nested":{"a":"日本","b":[1,2.5,null,true]},"scope":"read",'
    '"when":"2024-05-06 07:08:09+00:00"},"id":"evt_00112233445566778899","node_id":"node-1",'
    '"outcome":"success","reasons":["r\\"1","ü"],"request_id":"req-1",'
    '"resource":"https://tessera.test/oauth2/token","seq":42,"source":"127.0.0.1",'
    '"subject":"idn_é","ts":"2024-05-06T07:08:09.010203Z","type":"oauth.token.issued"}'
).encode()
HASH = "24951579c4c8c9ba3930eae46156c882bea6eea1c0a5762c0165a79682a60b02"


def test_canonical_encoding_is_pinned() -> None:
    assert canonical(RECORD) == CANONICAL
    assert chain_hash(GENESIS, RECORD) == HASH


def test_event_data_is_normalised_as_it_reads_back(services: Services) -> None:
    evt = services.audit.event("test.thing.done", data={"z": (1, 2), "a": {"y": 1, "x": "é"},
                                                        "when": RECORD["data"]["when"]})
    assert evt["data"] == {"a": {"x": "é", "y": 1}, "when": "2024-05-06 07:08:09+00:00",
                           "z": [1, 2]}
    assert list(evt["data"]) == ["a", "when", "z"]


def test_event_ids_follow_time(services: Services, clock: FakeClock) -> None:
    """Time-ordered, so each insert lands at the right edge of the unique id index (random
    ids dirtied a different index page per event)."""
    ids = []
    for _ in range(3):
        ids.append(services.audit.event("test.thing.done")["id"])
        clock.advance(milliseconds=2)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(i.startswith("evt_") and len(i) == 36 for i in ids)  # 12 + 20 hex digits


def _write_old_way(services: Services, evt: dict[str, Any]) -> None:
    """Append `evt` as releases before the single-encoding path did: a Core insert, every
    column encoded by SQLAlchemy's own types."""
    head = AuditHeadRow.__table__
    with services.sessions() as s:
        seq, prev = s.execute(select(head.c.seq, head.c.hash).where(head.c.id == 1)
                              .with_for_update()).one()
        seq += 1
        hashed = hashed_part({**evt, "seq": seq})
        hashed["ts"] = ts_text(evt["ts"])
        digest = chain_hash(prev, hashed)
        columns = AuditEventRow.__table__.c
        s.execute(insert(AuditEventRow.__table__).values(
            **{k: v for k, v in evt.items() if k in columns},
            seq=seq, prev_hash=prev, hash=digest))
        s.execute(update(head).where(head.c.id == 1).values(seq=seq, hash=digest))
        s.commit()


def test_events_written_before_and_after_read_back_as_hashed(services: Services) -> None:
    ctx = RequestContext(request_id="r1", source="127.0.0.1")
    data = {"jti": "j1", "scope": "read write", "exp": 1714979289, "name": "日本",
            "nested": {"b": [1, 2.5, None], "a": "x"}}
    old = services.audit.event("test.thing.done", actor="idn_a", subject="idn_é", ctx=ctx,
                               reasons=["because", "ü"], data=data)
    _write_old_way(services, old)
    built = [services.audit.event("oauth.token.issued", actor="idn_a", subject="idn_b",
                                  ctx=ctx, reasons=r, data={**data, "i": i})
             for i, r in enumerate([(), ("x",)])]
    with services.sessions() as s:  # the direct path, in the caller's transaction
        services.audit.record(s, "test.thing.done", actor="idn_a", data=data)
        s.commit()
    written = services.audit.commit_unit(WriteUnit(events=built))  # the group committer
    with services.sessions() as s:
        report = services.audit.verify(s)
        rows = list(s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq)))
    assert report.ok, report.problems
    assert report.checked == 4
    for evt, row in zip([old, None, *built], rows):
        if evt is not None:
            assert row.data == evt["data"]
            assert list(row.data) == list(evt["data"])
            assert row.reasons == evt["reasons"]
            assert row.ts == evt["ts"]
    assert written == [event_dict(r) | {"prev_hash": r.prev_hash, "hash": r.hash}
                       for r in rows[2:]]
    for row in rows:
        assert chain_hash(row.prev_hash, event_dict(row)) == row.hash


def test_data_the_chain_cannot_hash_fails_its_caller(services: Services) -> None:
    """A lone surrogate cannot be encoded: refused when the event is built (failing one
    request), not in the committer (failing every request of its batch)."""
    with pytest.raises(ValueError):
        services.audit.event("test.thing.done", data={"name": "\ud800"})


def test_data_replaced_after_building_is_stored_as_replaced(services: Services) -> None:
    """The kept JSON text serves only while `data` is the object it was decoded into."""
    evt = services.audit.event("oauth.token.issued", actor="idn_a", data={"jti": "j1"})
    evt["data"] = {"jti": "j2"}
    bare = {k: v for k, v in services.audit.event("oauth.token.issued", actor="idn_b").items()
            if k != DATA_JSON}
    bare["data"] = None  # an event made without `event`: JSON null, as SQLAlchemy stored it
    services.audit.commit_unit(WriteUnit(events=[evt, bare]))
    with services.sessions() as s:
        report = services.audit.verify(s)
        rows = list(s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(2)))
    assert report.ok, report.problems
    assert [rows[1].data, rows[0].data] == [{"jti": "j2"}, None]


def test_a_value_too_long_for_its_column_is_refused_not_cut(services: Services) -> None:
    """PostgreSQL's batch insert passes the values as JSON text: a string column must refuse
    a value too long for it (as a bound parameter is refused), never store it cut short."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce string lengths")
    evt = services.audit.event("oauth.token.issued", actor="idn_a")
    evt["resource"] = "r" * 401  # past `event`, which cuts values to fit
    with pytest.raises(Exception, match="too long"):
        services.audit.commit_unit(WriteUnit(events=[evt]))
    kept = services.audit.event("oauth.token.issued", actor="idn_a", resource="r" * 400)
    services.audit.commit_unit(WriteUnit(events=[kept]))
    with services.sessions() as s:
        report = services.audit.verify(s)
        (row,) = s.scalars(select(AuditEventRow))
    assert report.ok and report.checked == 1
    assert row.resource == "r" * 400


def test_every_column_reads_back_as_written_by_the_committer(services: Services) -> None:
    """Quotes, backslashes, control characters and non-ASCII text in every string column,
    NULLs where a column allows them, through the committer's batch insert."""
    odd = 'q"uo\'te \\ back\tslash\nline é 日本 \u2028 </script>'
    full = services.audit.event("oauth.token.issued", actor=odd, subject=odd, action=odd,
                                resource=odd, reasons=[odd],
                                ctx=RequestContext(request_id=odd, source=odd),
                                data={"v": odd, odd: [odd]})
    empty = services.audit.event("oauth.token.issued")
    written = services.audit.commit_unit(WriteUnit(events=[full, empty]))
    with services.sessions() as s:
        report = services.audit.verify(s)
        rows = list(s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq)))
    assert report.ok, report.problems
    assert [event_dict(r) | {"prev_hash": r.prev_hash, "hash": r.hash} for r in rows] == written
    assert rows[0].actor == rows[0].source == odd and rows[0].data == {"v": odd, odd: [odd]}
    assert (rows[1].actor, rows[1].subject, rows[1].request_id) == (None, None, None)
    assert rows[1].ts == empty["ts"]


def test_a_failed_append_with_a_checkpoint_due_fails_the_batch(services: Services) -> None:
    """PostgreSQL: the append fails on the server (a value too long) after the checkpoint has
    been written; nothing of the batch may be stored, and its callers must get the error."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce string lengths")
    services.audit.options.checkpoint_every = 1000
    events = [services.audit.event("oauth.token.issued", actor="idn_a", data={"i": i})
              for i in range(1200)]
    events.append(services.audit.event("oauth.token.issued", actor="idn_a"))
    events[-1]["resource"] = "r" * 401  # past `event`, which cuts values to fit
    with pytest.raises(Exception, match="too long"):
        services.audit.commit_unit(WriteUnit(events=events))
    with services.sessions() as s:
        assert services.audit.head(s)[0] == 0
        assert s.scalars(select(AuditEventRow)).first() is None
        assert services.audit.checkpoints(s) == []


def test_an_event_whose_text_column_holds_no_text_is_refused(services: Services) -> None:
    """A number where text belongs would be stored as its digits (PostgreSQL's batch insert
    reads values as JSON) or as a number in a text column (SQLite) while the chain hashed a
    number: verification would then call the event modified. Refused before anything is
    written (`event` itself makes every field text)."""
    evt = services.audit.event("oauth.token.issued", actor="idn_a")
    evt["subject"] = 42
    with pytest.raises(TypeError, match="subject"):
        services.audit.commit_unit(WriteUnit(events=[evt]))
    with services.sessions() as s:
        assert s.scalars(select(AuditEventRow)).first() is None


def test_an_event_timestamp_not_in_utc_is_refused(services: Services) -> None:
    from datetime import timedelta

    evt = services.audit.event("oauth.token.issued", actor="idn_a")
    evt["ts"] = evt["ts"].astimezone(timezone(timedelta(hours=2)))
    with pytest.raises(ValueError, match="UTC"):
        services.audit.commit_unit(WriteUnit(events=[evt]))


def test_event_fields_are_made_storable_for_their_own_event(services: Services) -> None:
    """A value the database would refuse fails no batch: too long for its column, a NUL
    character (PostgreSQL's text cannot hold one), a lone surrogate (no encoding can)."""
    odd = services.audit.event("oauth.token.issued", actor="a\x00b", subject="s" * 300,
                               action="x\ud800y", reasons=["r\udfffs", "ok"],
                               ctx=RequestContext(request_id="q" * 150, source="1.2.3.4"))
    plain = services.audit.event("oauth.token.issued", actor="idn_a")
    services.audit.commit_unit(WriteUnit(events=[odd]))
    services.audit.commit_unit(WriteUnit(events=[plain]))
    with services.sessions() as s:
        report = services.audit.verify(s)
        rows = list(s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq)))
    assert report.ok, report.problems
    first = rows[0]
    assert (first.actor, first.action, first.reasons) == ("a\ufffdb", "x?y", ["r?s", "ok"])
    assert first.subject == "s" * 199 + "\u2026" and len(first.request_id) == 100
    assert rows[1].actor == "idn_a"


def test_event_data_the_json_type_cannot_hold_is_refused_by_its_caller(
        services: Services) -> None:
    """NaN and the infinities: PostgreSQL's json refuses them, which would fail every request
    of the batch; `event` refuses them, failing only its own caller."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            services.audit.event("oauth.token.issued", data={"latency": bad})

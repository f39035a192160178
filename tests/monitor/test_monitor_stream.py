"""The monitor's own read of the audit stream sees each event as the chain records it, and
consuming the stream in passes stores exactly what the engine computes event by event, whichever
process (the one holding the cursor's lease) consumes it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event, select, text
from tests.conftest import make_services

from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.audit.chain import ts_text
from tessera.audit.service import AuditService
from tessera.clock import FakeClock
from tessera.config import MonitorSettings, Settings
from tessera.container import Services
from tessera.db.engine import make_session_factory
from tessera.monitor import service as monitor_service
from tessera.monitor.baseline import Baseline
from tessera.monitor.engine import Monitor, MonitorConfig, event_from_row
from tessera.monitor.models import AlertRow, BaselineRow, RiskRow, StreamCursorRow
from tessera.monitor.service import CURSOR, MonitorService

CONFIG = MonitorConfig(learning_seconds=300, min_events=5)
LEASE = 3600.0  # longer than the traffic of a test (its clock moves a minute a round)


def record(s: Any, services: Services, type: str, actor: str | None,
           subject: str | None = None, *, source: str | None = "10.0.0.7",
           outcome: str = "success", action: str | None = "read",
           resource: str | None = "ds:a", **data: Any) -> None:
    services.audit.record(s, type, actor=actor, subject=subject, action=action,
                          resource=resource, outcome=outcome, data=data,
                          ctx=RequestContext(source=source, request_id="req-1"))


def normal_traffic(services: Services, clock: FakeClock, agents: list[str],
                   minutes: int) -> None:
    """Each agent: three tokens and one decision a minute, from its own network."""
    for minute in range(minutes):
        with services.sessions() as s:
            for i, who in enumerate(agents):
                for _ in range(3):
                    record(s, services, ev.TOKEN_ISSUED, who, who, source=f"10.1.{i}.5",
                           action="client_credentials", resource="https://api.example",
                           kid=f"kid-{i}", method="private_key_jwt", scope="read")
                record(s, services, ev.AUTHZ_DECISION, who, who, source=f"10.1.{i}.5",
                       resource=f"ds:{minute % 3}")
            s.commit()
        clock.advance(60)


def misbehaviour(services: Services, agents: list[str]) -> None:
    """A new network and a copied key, denials, a reused refresh token, refusals naming a
    victim, events of nobody, the monitor's own, and one identity acting for another."""
    a0, a1, a2, a3, a4 = agents[:5]
    with services.sessions() as s:
        record(s, services, ev.TOKEN_ISSUED, a0, a0, source="203.0.113.9",
               action="client_credentials", kid="kid-0")
        for _ in range(6):
            record(s, services, ev.AUTHZ_DECISION, a1, a1, source="10.1.1.5",
                   outcome="failure", resource="ds:secret")
        record(s, services, ev.REFRESH_TOKEN_REUSED, None, a2, outcome="failure",
               family="fam_1")
        for _ in range(3):
            record(s, services, ev.TOKEN_REFUSED, a3, a3, source="198.51.100.4",
                   outcome="failure", error="invalid_client")
        record(s, services, "system.job.finished", None, None, source=None, action=None)
        record(s, services, ev.ALERT_RAISED, "tessera.monitor", a4)
        record(s, services, ev.AUTHZ_DECISION, a4, a0, source="10.1.4.5", resource="ds:b",
               credential="cred-4")
        s.commit()


def stream(services: Services, make_identity: Callable[..., Any],
           clock: FakeClock) -> list[str]:
    agents = [make_identity(f"agent-stream-{i}").id for i in range(5)]
    normal_traffic(services, clock, agents, 8)
    misbehaviour(services, agents)
    normal_traffic(services, clock, agents, 2)
    return agents


def consume(monitor: MonitorService, services: Services, limit: int) -> None:
    while True:
        with services.sessions() as s:
            done = monitor.process(s, limit=limit)
            s.commit()
        if done == 0:
            return


def stored(services: Services) -> dict[str, Any]:
    with services.sessions() as s:
        return {
            "baselines": {r.identity_id: r.state for r in s.scalars(select(BaselineRow))},
            "alerts": sorted((a.event_seq, a.detector, a.identity_id, a.score, a.summary,
                              a.data) for a in s.scalars(select(AlertRow))),
            "risk": {r.identity_id: r.score for r in s.scalars(select(RiskRow))}}


def event_by_event(services: Services) -> dict[str, Any]:
    """The engine alone, fed every stored event, one at a time."""
    m = Monitor(CONFIG)
    alerts = []
    with services.sessions() as s:
        for row in AuditService.read_stream(s, limit=1_000_000):
            e = event_from_row(row)
            if e is not None:
                alerts += m.observe(e)
    return {
        "baselines": {who: json.loads(json.dumps(b.to_json())) for who, b in
                      m.baselines.items()},
        "alerts": sorted((a.seq, a.detector, a.identity, a.score, a.summary,
                          {**a.data, "risk": a.risk}) for a in alerts),
        "risk": {who: m.risk.raw(who)[0] for who in {a.identity for a in alerts}}}  # type: ignore[index]


def test_read_stream_gives_each_field_as_iter_rows_does(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    stream(services, make_identity, clock)
    with services.sessions() as s:
        full = list(AuditService.iter_rows(s))
        light = AuditService.read_stream(s, after=0, limit=100_000)
        paged = AuditService.read_stream(s, after=full[9]["seq"], limit=7)
    assert len(light) == len(full) > 100
    for got, rec in zip(light, full, strict=True):
        assert ts_text(got.ts) == rec["ts"] and got.ts.utcoffset() is not None
        assert {k: v for k, v in got._asdict().items() if k != "ts"} == \
            {k: rec[k] for k in got._fields if k != "ts"}
    assert [e.seq for e in paged] == [r["seq"] for r in full[10:17]]


def test_event_from_row_takes_what_an_identity_did(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    stream(services, make_identity, clock)
    with services.sessions() as s:
        rows = AuditService.read_stream(s, limit=100_000)
    events = [event_from_row(row) for row in rows]
    skipped = {row.type for row, e in zip(rows, events, strict=True) if e is None}
    # Refused token requests name a client they did not prove; the monitor's own events and
    # bookkeeping are no identity's doing.
    assert {ev.TOKEN_REFUSED, "system.job.finished", ev.ALERT_RAISED} <= skipped
    for row, e in zip(rows, events, strict=True):
        if e is None:
            continue
        # A reused refresh token is charged to its subject, everything else to its actor.
        who = row.subject if row.type == ev.REFRESH_TOKEN_REUSED else row.actor or row.subject
        assert (e.identity, e.seq, e.ts, e.type, e.outcome, e.source, e.data) == \
            (who, row.seq, row.ts.timestamp(), row.type, row.outcome, row.source, row.data)
        assert e.credential == (row.data.get("kid") or row.data.get("credential"))
    assert any(e is not None and e.type == ev.REFRESH_TOKEN_REUSED for e in events)


@pytest.mark.parametrize("limit", [3, 2000])
def test_passes_store_what_the_engine_computes_event_by_event(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        limit: int) -> None:
    monitor = services.monitor
    assert monitor is not None
    monitor.monitor.config = CONFIG
    stream(services, make_identity, clock)
    consume(monitor, services, limit)
    mine, reference = stored(services), event_by_event(services)
    assert {a[1] for a in reference["alerts"]} >= {"new_network", "impossible_concurrency",
                                                  "denial_burst", "refresh_token_reuse"}
    assert mine == reference


def worker(services: Services) -> MonitorService:
    """The monitor of one worker process (or node): memory of its own, empty at first."""
    return MonitorService(services.clock, services.audit, services.identities,
                          make_session_factory(services.engine, readonly=True), config=CONFIG,
                          lease_seconds=LEASE)


def cursor(services: Services) -> tuple[int, str | None, Any]:
    with services.sessions() as s:
        row = s.get_one(StreamCursorRow, CURSOR)
        return row.seq, row.owner, row.lease_until


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    """The SQL this thread sends to the database meanwhile."""
    sent: list[str] = []
    me = threading.get_ident()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() == me:
            sent.append(statement)

    event.listen(services.engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(services.engine, "before_cursor_execute", seen)


def test_a_monitor_taking_over_mid_stream_continues_from_the_stored_baselines(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_service, "_CHUNK", 2)  # several IN (...) lists per load
    first = worker(services)
    agents = [make_identity(f"agent-takeover-{i}").id for i in range(5)]
    normal_traffic(services, clock, agents, 6)
    consume(first, services, 2000)
    normal_traffic(services, clock, agents, 3)
    # The first process has stopped; once its lease has run out, another process's monitor
    # takes over: nothing in memory, so everything comes from the tables.
    clock.advance(LEASE)
    second = worker(services)
    consume(second, services, 7)
    assert cursor(services)[1] == second.lease_owner
    mine, reference = stored(services), event_by_event(services)
    assert mine["alerts"] == [] and mine == reference
    with services.sessions() as s:
        row = s.get_one(BaselineRow, agents[0])
    assert Baseline.from_json(row.state).events == 9 * 4


def test_another_process_leaves_the_stream_to_the_lease_holder(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    """While one process holds the lease, another's pass reads the cursor row and nothing
    else: no events, and no reload of risk and baselines into its memory."""
    first, second = worker(services), worker(services)
    agents = [make_identity(f"agent-lease-{i}").id for i in range(3)]
    normal_traffic(services, clock, agents, 6)
    consume(first, services, 7)
    normal_traffic(services, clock, agents, 2)
    memory = second.monitor
    with statements(services) as sent, services.sessions() as s:
        assert second.process(s) == 0
        s.commit()
    assert len(sent) == 1 and "monitor_cursors" in sent[0]
    assert second.monitor is memory and memory.baselines == {} and memory.risk.raw(
        agents[0]) is None
    consume(first, services, 7)  # everything, by the holder
    assert stored(services) == event_by_event(services)


def test_a_process_that_lost_the_lease_leaves_the_stream_to_the_new_holder(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    first, second = worker(services), worker(services)
    agents = [make_identity(f"agent-lost-{i}").id for i in range(3)]
    normal_traffic(services, clock, agents, 6)
    consume(first, services, 2000)
    clock.advance(LEASE)  # the first stalls past its lease; the second takes over
    normal_traffic(services, clock, agents, 1)
    consume(second, services, 2000)
    normal_traffic(services, clock, agents, 2)
    memory, seq = first.monitor, cursor(services)[0]
    with statements(services) as sent, services.sessions() as s:  # the first comes back
        assert first.process(s) == 0
        s.commit()
    assert len(sent) == 1 and "monitor_cursors" in sent[0]
    assert first.monitor is memory and cursor(services)[:2] == (seq, second.lease_owner)
    consume(second, services, 2000)
    assert stored(services) == event_by_event(services)


def test_an_idle_holder_renews_its_lease_once_half_of_it_is_gone(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    """No new events: the holder writes nothing while more than half of its lease is left,
    then renews it in one statement, so another process never takes an idle stream."""
    first, second = worker(services), worker(services)
    agents = [make_identity(f"agent-idle-{i}").id for i in range(2)]
    normal_traffic(services, clock, agents, 2)
    consume(first, services, 2000)
    seq, _, until = cursor(services)
    clock.set(until - timedelta(seconds=LEASE / 2 + 1))  # just over half left
    with statements(services) as sent, services.sessions() as s:
        assert first.process(s) == 0
        s.commit()
    assert not [q for q in sent if q.lstrip().upper().startswith("UPDATE")]
    assert cursor(services) == (seq, first.lease_owner, until)
    clock.advance(2)  # just under half left
    with statements(services) as sent, services.sessions() as s:
        assert first.process(s) == 0
        s.commit()
    assert len([q for q in sent if q.lstrip().upper().startswith("UPDATE")]) == 1
    assert cursor(services) == (seq, first.lease_owner,
                                clock.now() + timedelta(seconds=LEASE))
    clock.set(until + timedelta(seconds=1))  # the first lease would have run out
    normal_traffic(services, clock, agents, 1)
    with services.sessions() as s:
        assert second.process(s) == 0
        s.commit()
    consume(first, services, 2000)
    assert cursor(services)[1] == first.lease_owner
    assert stored(services) == event_by_event(services)


def test_the_lease_lasts_as_configured(settings: Settings, clock: FakeClock,
                                       master_key: bytes) -> None:
    services = make_services(settings.model_copy(update={
        "monitor": MonitorSettings(lease_seconds=42)}), clock, master_key)
    try:
        assert services.monitor is not None
        with services.sessions() as s:
            record(s, services, ev.AUTHZ_DECISION, "agent-configured", "agent-configured")
            s.commit()
        consume(services.monitor, services, 2000)
        assert cursor(services)[1:] == (services.monitor.lease_owner,
                                        clock.now() + timedelta(seconds=42))
    finally:
        services.close()


@pytest.mark.parametrize(("interval", "lease"), [(1.0, 1.0), (5.0, 9.9), (5.0, 2.0)])
def test_settings_reject_a_lease_shorter_than_two_poll_intervals(interval: float,
                                                                 lease: float) -> None:
    with pytest.raises(ValidationError, match="lease_seconds must be at least twice"):
        MonitorSettings(interval=interval, lease_seconds=lease)


@pytest.mark.parametrize(("interval", "lease"), [(1.0, 10.0), (30.0, 90.0), (60.0, 180.0)])
def test_the_default_lease_follows_the_poll_interval(interval: float, lease: float) -> None:
    """Every poll interval valid before the lease existed (up to 60 s) still starts."""
    assert MonitorSettings(interval=interval).lease == lease
    assert MonitorSettings(interval=interval, lease_seconds=2 * interval).lease == 2 * interval


def test_the_migration_adds_the_lease_to_an_existing_cursor(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    """A database at 0009 whose monitor has consumed the stream: the upgrade keeps where it
    read up to, nobody holds the lease, and the next pass goes on from there and takes it."""
    from alembic import command

    from tessera.db import migrate

    agents = [make_identity(f"agent-migrated-{i}").id for i in range(2)]
    normal_traffic(services, clock, agents, 2)
    consume(worker(services), services, 2000)
    seq = cursor(services)[0]
    cfg = migrate._config()
    with services.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010_monitor_cursor_lease@-1")
    assert migrate.pending(services.engine) == {"0010_monitor_cursor_lease"}
    with services.engine.connect() as conn:
        assert conn.execute(text("SELECT * FROM monitor_cursors")).all() == [(CURSOR, seq)]
    migrate.upgrade(services.engine)
    assert migrate.pending(services.engine) == set()
    assert cursor(services) == (seq, None, None)
    normal_traffic(services, clock, agents, 1)
    after = worker(services)
    with services.sessions() as s:
        assert after.process(s) == 2 * 4
        s.commit()
    assert cursor(services)[1] == after.lease_owner
    assert stored(services) == event_by_event(services)


def _pass_with(services: Services, clock: FakeClock, make_identity: Callable[..., Any],
               monkeypatch: pytest.MonkeyPatch, during: Callable[[], None]) -> MonitorService:
    """A monitor that has consumed some traffic, with more waiting, whose next pass runs
    `during()` once, in the middle of learning (before it observes its first event)."""
    monitor = services.monitor
    assert monitor is not None
    monitor.monitor.config = CONFIG
    agents = [make_identity(f"agent-mid-pass-{i}").id for i in range(3)]
    normal_traffic(services, clock, agents, 2)
    with services.sessions() as s:  # a first pass: the cursor exists, memory is current
        assert monitor.process(s) > 0
        s.commit()
    normal_traffic(services, clock, agents, 2)
    real, done = monitor.monitor.observe, []

    def observe(e: Any) -> Any:
        if not done:
            done.append(1)
            during()
        return real(e)

    monkeypatch.setattr(monitor.monitor, "observe", observe)
    return monitor


def test_a_pass_learns_without_holding_the_write_lock(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the monitor reads and learns, the audit committer (any writer) is not kept
    waiting: on SQLite a write transaction would hold the database's only write lock, on
    PostgreSQL a locked cursor row would stall the other nodes' monitors."""
    from sqlalchemy import text

    written: list[int] = []

    def another_writer_commits() -> None:
        engine = services.engine
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA busy_timeout=200")
            else:
                conn.exec_driver_sql("SET lock_timeout = '200ms'")
                conn.execute(text("SELECT seq FROM monitor_cursors FOR UPDATE"))
            conn.execute(text("UPDATE audit_head SET hash = hash WHERE id = 1"))
            conn.commit()
        written.append(1)

    monitor = _pass_with(services, clock, make_identity, monkeypatch, another_writer_commits)
    with services.sessions() as s:
        assert monitor.process(s) > 0
        s.commit()
    assert written == [1]


def test_a_pass_whose_cursor_moved_meanwhile_writes_nothing(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes may read the same events; only the one that moves the cursor from where it
    read it keeps its pass. The other writes nothing and reloads its memory next time."""
    from sqlalchemy import text

    def another_node_takes_over() -> None:
        with services.engine.connect() as conn:
            conn.execute(text("UPDATE monitor_cursors SET seq = seq + 1000"))
            conn.commit()

    monitor = _pass_with(services, clock, make_identity, monkeypatch, another_node_takes_over)
    before = stored(services)
    with services.sessions() as s:
        assert monitor.process(s) == 0
        s.commit()
    assert stored(services) == before
    with services.sessions() as s:  # next pass: memory reloaded, from the moved cursor
        assert monitor.process(s) == 0
        s.commit()
    assert monitor._seq != -1


def test_a_pass_that_fails_after_learning_is_learnt_once_when_retried(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    """A pass that fails once it has learnt (here a CAEP hook; as well a busy database at the
    cursor move) leaves memory ahead of the tables: the next pass must reload rather than learn
    the same events a second time (doubled baselines, alerts lost to their own cooldown)."""
    monitor = services.monitor
    assert monitor is not None
    monitor.monitor.config = CONFIG
    stream(services, make_identity, clock)
    failures: list[int] = []

    def fails_once(_session: Any, _records: Any) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("push signer unavailable")

    monitor.event_hooks.insert(0, fails_once)
    with services.sessions() as s:
        with pytest.raises(RuntimeError):
            monitor.process(s, limit=2000)
        s.rollback()
    consume(monitor, services, 2000)
    mine, reference = stored(services), event_by_event(services)
    assert reference["alerts"] and mine == reference


def test_a_holder_that_stops_hands_the_stream_over_at_once(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    """A stopping worker gives its lease up (`release`, on the app's shutdown): another
    takes the stream at its next pass, not a lease later; a process that does not hold it
    releases nothing."""
    first, second = worker(services), worker(services)
    agents = [make_identity(f"agent-release-{i}").id for i in range(3)]
    normal_traffic(services, clock, agents, 4)
    consume(first, services, 2000)
    with services.sessions() as s:
        second.release(s)  # not the holder: nothing changes
        s.commit()
    assert cursor(services)[1:] == (first.lease_owner, clock.now() + timedelta(seconds=LEASE))
    with services.sessions() as s:
        first.release(s)
        s.commit()
    normal_traffic(services, clock, agents, 2)
    consume(second, services, 2000)
    assert cursor(services)[1] == second.lease_owner
    assert stored(services) == event_by_event(services)


def test_the_app_releases_the_stream_when_it_stops(services: Services) -> None:
    from fastapi.testclient import TestClient

    from tessera.api.app import create_app

    with services.sessions() as s:
        record(s, services, ev.AUTHZ_DECISION, "agent-app", "agent-app")
        s.commit()
    assert services.monitor is not None
    with TestClient(create_app(services=services)):
        # The jobs thread runs its jobs once at start: the monitor takes the stream.
        taken = threading.Event()
        for _ in range(1000):
            with services.sessions() as s:
                row = s.get(StreamCursorRow, CURSOR)
                if row is not None and row.lease_until is not None:
                    taken.set()
                    break
            taken.wait(0.01)
        assert taken.is_set()
    seq, owner, lease_until = cursor(services)
    assert seq > 0 and owner == services.monitor.lease_owner and lease_until is None

"""The audit actor index is partial (migration 0009): the search by identity still finds every
event, and both databases still serve it from the subject and actor indexes."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import Engine, select, text

from tessera.audit import EventQuery
from tessera.container import Services
from tessera.db import migrate

# (actor, subject) of each event written.
EVENTS = [("idn_a", "idn_a"), ("idn_a", "idn_b"), ("idn_b", "idn_a"), ("idn_a", None),
          (None, "idn_a"), ("idn_c", "idn_c"), ("idn_b", "idn_c")]


def write(services: Services) -> None:
    with services.sessions() as s:
        for actor, subject in EVENTS:
            services.audit.record(s, "test.thing.done", actor=actor, subject=subject)
        s.commit()


def found(services: Services, identity: str) -> list[tuple[Any, Any]]:
    with services.sessions() as s:
        return [(r.actor, r.subject) for r in services.audit.search(
            s, EventQuery(identity=identity, limit=100))]


def plan(engine: Engine, identity: str) -> str:
    """The plan of the search by identity, as the database reports it."""
    from tessera.audit.models import AuditEventRow
    from tessera.audit.service import AuditService

    captured: list[Any] = []

    class Capture:
        def scalars(self, stmt: Any) -> list[Any]:
            captured.append(stmt)
            return []

        def get_bind(self) -> Engine:
            return engine

    AuditService.search(None, Capture(), EventQuery(identity=identity))  # type: ignore[arg-type]
    search = captured[0]
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            stmt = search.compile(engine, compile_kwargs={"literal_binds": True})
            return " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {stmt}"))
        # The test tables are tiny, and a scan in seq order would do for so few rows: ask for
        # the identity condition alone, with only bitmap scans allowed, to show whether the
        # indexes can serve it.
        (condition,) = [c for c in search.whereclause.clauses if "seq" not in str(c)]
        stmt = select(AuditEventRow.seq).where(condition).compile(
            engine, compile_kwargs={"literal_binds": True})
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
        return " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {stmt}"))


def index_sql(engine: Engine) -> str:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            return conn.execute(text("SELECT sql FROM sqlite_master "
                                     "WHERE name = 'ix_audit_events_actor'")).scalar_one()
        return conn.execute(text("SELECT indexdef FROM pg_indexes "
                                 "WHERE indexname = 'ix_audit_events_actor'")).scalar_one()


def test_search_by_identity_finds_it_as_actor_or_subject(services: Services) -> None:
    write(services)
    assert found(services, "idn_a") == [e for e in EVENTS if "idn_a" in e]
    assert found(services, "idn_b") == [e for e in EVENTS if "idn_b" in e]
    assert found(services, "idn_c") == [e for e in EVENTS if "idn_c" in e]


def test_search_by_identity_is_served_by_both_indexes(services: Services) -> None:
    write(services)
    shown = plan(services.engine, "idn_a")
    assert "ix_audit_events_subject" in shown
    assert "ix_audit_events_actor" in shown


def test_migration_makes_an_existing_actor_index_partial(services: Services) -> None:
    write(services)
    cfg = migrate._config()
    with services.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009_audit_actor_index@-1")
    assert "WHERE" not in index_sql(services.engine)
    assert migrate.pending(services.engine) == {"0009_audit_actor_index"}
    migrate.upgrade(services.engine)
    assert migrate.pending(services.engine) == set()
    assert "WHERE" in index_sql(services.engine)
    assert found(services, "idn_a") == [e for e in EVENTS if "idn_a" in e]
    assert "ix_audit_events_actor" in plan(services.engine, "idn_a")

"""Group commit: a caller's commit returns only once its events are durable, and a failed
audit write means no token leaves the server."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from tessera.container import Services


def test_commit_returns_after_the_grouped_event_is_durable(services: Services) -> None:
    assert services.audit.committer is not None
    with services.sessions() as s:
        services.audit.record(s, "authz.decision.made", actor="idn_a")
        s.commit()
    with services.engine.connect() as conn:  # another connection sees it at once
        types = [r[0] for r in conn.execute(text("SELECT type FROM audit_events"))]
    assert types == ["authz.decision.made"]


def test_rolled_back_grouped_event_is_never_written(services: Services) -> None:
    with services.sessions() as s:
        services.audit.record(s, "authz.decision.made", actor="idn_a")
        s.rollback()
    with services.sessions() as s:
        assert services.audit.events(s) == []


def test_concurrent_callers_share_transactions_and_keep_one_chain(services: Services) -> None:
    def one(i: int) -> None:
        with services.sessions() as s:
            services.audit.record(s, "authz.decision.made", actor=f"idn_{i}")
            s.commit()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(200)))
    with services.sessions() as s:
        report = services.audit.verify(s, jwks=services.keys.jwks())
    assert report.ok and report.checked == 200


def test_no_token_leaves_when_its_event_cannot_be_committed(
        services: Services, make_identity: Callable[..., Any], monkeypatch: Any) -> None:
    from tessera.api.app import create_app

    agent = make_identity("agent-durable")
    committer = services.audit.committer
    assert committer is not None

    def broken(_session: Any, _events: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(committer, "_apply", broken)
    app = create_app(services=services, run_jobs=False)
    with TestClient(app, base_url="http://tessera.test",
                    raise_server_exceptions=False) as client:
        resp = client.post("/oauth2/token", data=agent.form())
    assert resp.status_code == 500
    assert "access_token" not in resp.text


def test_checkpoint_job_signs_only_a_moved_head(services: Services) -> None:
    services.audit.options.checkpoint_every = 0
    with services.sessions() as s:
        services.audit.record(s, "test.thing.done")
        first = services.audit.checkpoint(s)
        s.commit()
    with services.sessions() as s:
        again = services.audit.checkpoint(s)
    assert first is not None and first.seq == 1 and again is None


def test_session_closed_without_commit_forgets_its_events(services: Services) -> None:
    s = services.sessions()
    services.audit.record(s, "test.thing.done")  # joins the transaction
    services.audit.record(s, "authz.decision.made")  # waits for the commit
    s.close()
    s.commit()  # the same session object, reused: nothing stale may be written
    with services.sessions() as s2:
        assert services.audit.events(s2) == []


def test_scrub_markers_match_their_patterns() -> None:
    """The substring pre-check must name each pattern's fixed start, or a secret could slip
    past the regex it never reaches."""
    from tessera.audit.service import _SECRET_MARKERS, scrub

    for marker, pattern in _SECRET_MARKERS:
        assert pattern.pattern.startswith(marker)
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert scrub({"note": f"token {jwt_like} here"}) == {"note": "token [redacted] here"}
    assert scrub(["tsr_rt_abcdefghijkl"]) == ["[redacted]"]


def test_committer_retries_a_deadlock_victim(services: Services, monkeypatch: Any) -> None:
    """PostgreSQL may pick a committer's transaction as a deadlock victim: the batch (pure
    data, rolled back) is applied again instead of failing its requests."""
    from sqlalchemy.exc import OperationalError

    from tessera.audit.groupcommit import WriteUnit

    committer = services.audit.committer
    assert committer is not None
    real, calls = committer._apply, []

    class Deadlock(Exception):
        sqlstate = "40P01"

    def flaky(session: Any, units: Any) -> Any:
        calls.append(len(units))
        if len(calls) == 1:
            raise OperationalError("UPDATE ...", {}, Deadlock("deadlock detected"))
        return real(session, units)

    monkeypatch.setattr(committer, "_apply", flaky)
    written = committer.submit(WriteUnit(events=[services.audit.event("test.retry")])).result(30)
    assert len(calls) == 2 and written[0]["type"] == "test.retry"
    with services.sessions() as s:
        assert [e.type for e in services.audit.events(s, type="test.retry")] == ["test.retry"]


def test_usage_stamps_run_in_one_order_whatever_the_units(monkeypatch: Any) -> None:
    """Row locks taken in a stable order (table, row) keep committers of several workers from
    deadlocking one another."""
    from tessera.db.fast import FastStatement
    from tessera.identity.service import _TOUCH_IDENTITY, _TOUCH_KEY
    from tessera.oauth.deferred import run_statements

    seen: list[tuple[str, str]] = []

    def record(stmt: FastStatement, _session: Any, params: dict[str, Any]) -> list[Any]:
        seen.append((stmt._stmt.table.name, params["row_id"]))  # type: ignore[attr-defined]
        return []

    monkeypatch.setattr(FastStatement, "run", record)
    run_statements(None, [  # type: ignore[arg-type]
        (0, [(_TOUCH_IDENTITY, {"row_id": "idn_b", "now": 1}),
             (_TOUCH_KEY, {"row_id": "key_a", "now": 1})]),
        (1, [(_TOUCH_IDENTITY, {"row_id": "idn_a", "now": 1})])])
    assert seen == [("credentials", "key_a"), ("identities", "idn_a"), ("identities", "idn_b")]


def _counting_committer() -> tuple[Any, list[int]]:
    """A GroupCommitter over a fake session that records each batch's size."""
    from tessera.audit.groupcommit import GroupCommitter

    sizes: list[int] = []

    class FakeSession:
        def commit(self) -> None: ...
        def rollback(self) -> None: ...
        def close(self) -> None: ...

    class FakeConn:
        def close(self) -> None: ...
        def invalidate(self) -> None: ...

    class FakeTransactions:  # tessera.db.pipeline.Transactions' interface
        conn = FakeConn()
        pipelines = False

        def begin(self) -> None: ...
        def commit(self, session: Any) -> None: session.commit()
        def rollback(self, session: Any) -> None: session.rollback()

    class Factory:
        kw: dict[str, Any] = {"bind": None}

    def apply(_session: Any, units: list[Any]) -> list[Any]:
        sizes.append(len(units))
        return [[{"n": i}] for i, _ in enumerate(units)]

    committer = GroupCommitter(Factory(), apply)  # type: ignore[arg-type]
    committer._open = lambda: (FakeSession(), FakeTransactions())  # type: ignore[method-assign]
    return committer, sizes


def test_units_submitted_together_from_a_loop_commit_as_one_batch() -> None:
    """Requests served in the same loop iterations are handed over as one wave: one batch,
    however the committer thread is scheduled."""
    import asyncio

    from tessera.audit.groupcommit import WriteUnit

    committer, sizes = _counting_committer()

    async def main() -> list[Any]:
        async def request(i: int) -> Any:
            for _ in range(i):  # request i is ready one loop iteration after request i-1
                await asyncio.sleep(0)
            return await committer.submit_async(WriteUnit(events=[{"i": i}]))

        return await asyncio.gather(*(request(i) for i in range(6)))

    try:
        results = asyncio.run(main())
    finally:
        committer.close()
    assert sizes == [6]
    assert [r[0]["n"] for r in results] == list(range(6))


def test_a_wave_waits_only_while_units_keep_coming() -> None:
    """A lone unit is handed over after a couple of idle loop passes, not held back."""
    import asyncio

    from tessera.audit.groupcommit import WriteUnit

    committer, sizes = _counting_committer()

    async def main() -> None:
        for _ in range(3):
            await asyncio.wait_for(committer.submit_async(WriteUnit(events=[{}])), 5)

    try:
        asyncio.run(main())
    finally:
        committer.close()
    assert sizes == [1, 1, 1]


def test_a_wave_pending_when_the_committer_stops_fails_its_callers() -> None:
    import asyncio

    import pytest

    from tessera.audit.groupcommit import WriteUnit

    committer, sizes = _counting_committer()

    async def main() -> None:
        fut = committer.submit_async(WriteUnit(events=[{}]))
        committer.close()  # before the loop hands the wave over
        with pytest.raises(RuntimeError, match="stopped"):
            await asyncio.wait_for(fut, 5)
        with pytest.raises(RuntimeError, match="stopped"):
            committer.submit_async(WriteUnit(events=[{}]))

    asyncio.run(main())
    assert sizes == []


def test_jti_batch_insert_reports_exactly_the_uses_that_won(services: Services) -> None:
    """One INSERT .. ON CONFLICT DO NOTHING RETURNING per batch (on SQLite in chunks above its
    row limit): a jti stored before, or claimed twice within the batch, loses."""
    from datetime import timedelta

    from tessera.oauth import deferred
    from tessera.oauth.deferred import use_jtis

    exp = services.clock.now() + timedelta(minutes=5)
    replayed = [RuntimeError(f"replay {i}") for i in range(7)]

    built: list[tuple[int, str]] = []

    def refusal(i: int) -> Callable[[str], Exception]:
        def build(issuer: str) -> Exception:
            built.append((i, issuer))
            return replayed[i]
        return build

    with services.sessions() as s:
        assert use_jtis(s, [(0, [("iss", "j-old", exp, refusal(0))])])({}) == {}
        s.commit()
    rows = deferred._JTI_INSERT  # SQLite's (PostgreSQL's takes any number of rows at once)
    rows._max = 2  # force several chunks
    try:
        with services.sessions() as s:
            refused = use_jtis(s, [
                (0, [("iss", "j-1", exp, refusal(0))]),
                (1, [("iss", "j-old", exp, refusal(1))]),  # stored earlier
                (2, [("iss", "j-2", exp, refusal(2))]),
                (3, [("iss", "j-1", exp, refusal(3))]),  # claimed by unit 0
                (4, [("other", "j-1", exp, refusal(4))]),  # another issuer: its own jti
                (5, [("iss", "j-3", exp, refusal(5))]),
            ])({})
            s.commit()
    finally:
        rows._max = 256
    assert refused == {1: replayed[1], 3: replayed[3]}
    assert sorted(built) == [(1, "iss"), (3, "iss")]  # built for the losers only
    with services.sessions() as s:
        stored = set(s.execute(text("SELECT issuer, jti FROM used_jtis")).all())
    assert stored == {("iss", "j-old"), ("iss", "j-1"), ("iss", "j-2"), ("other", "j-1"),
                      ("iss", "j-3")}


def test_jtis_of_units_refused_before_the_insert_was_read_are_not_used(
        services: Services) -> None:
    """The jti insert is sent before the rev check's result is known: a jti claimed only by
    units an earlier hook refused is deleted again, and a refused unit's claim passes to the
    next unit claiming the same jti, as if the refused units had never been seen."""
    from datetime import timedelta

    from tessera.oauth.deferred import use_jtis

    exp = services.clock.now() + timedelta(minutes=5)
    replayed = [RuntimeError(f"replay {i}") for i in range(4)]
    stale = RuntimeError("stale")
    with services.sessions() as s:
        settle = use_jtis(s, [
            (0, [("iss", "j-stale", exp, lambda _i: replayed[0])]),
            (1, [("iss", "j-shared", exp, lambda _i: replayed[1])]),
            (2, [("iss", "j-shared", exp, lambda _i: replayed[2])]),
            (3, [("iss", "j-shared", exp, lambda _i: replayed[3])]),
        ])
        refused = settle({0: stale, 1: stale})  # as the rev check refused units 0 and 1
        s.commit()
    assert refused == {3: replayed[3]}  # unit 2 took over unit 1's claim; unit 0 lost nothing
    with services.sessions() as s:
        stored = set(s.execute(text("SELECT issuer, jti FROM used_jtis")).all())
    assert stored == {("iss", "j-shared")}  # j-stale is free for unit 0's retry


def test_a_unit_claiming_one_jti_twice_is_refused(services: Services) -> None:
    from datetime import timedelta

    from tessera.oauth.deferred import use_jtis

    exp = services.clock.now() + timedelta(minutes=5)
    replayed = RuntimeError("replayed")
    with services.sessions() as s:
        refused = use_jtis(s, [(0, [("iss", "j", exp, lambda _i: replayed),
                                    ("iss", "j", exp, lambda _i: replayed)])])({})
        s.rollback()
    assert refused == {0: replayed}


def test_rev_check_refuses_only_units_whose_view_moved(
        services: Services, make_identity: Callable[..., Any]) -> None:
    from tessera.oauth.deferred import StaleClient, check_revs

    a, b = make_identity("rev-a"), make_identity("rev-b")
    with services.sessions() as s:
        revs = dict(s.execute(text("SELECT id, rev FROM identities WHERE id IN (:a, :b)"),
                              {"a": a.id, "b": b.id}).all())
        refused = check_revs(s, [(0, [(a.id, revs[a.id])]), (1, [(b.id, revs[b.id] - 1)]),
                                 (2, [("idn_gone", 0)]), (3, [(a.id, revs[a.id])])])({})
    assert set(refused) == {1, 2}
    assert all(isinstance(e, StaleClient) for e in refused.values())


def test_a_wave_is_handed_over_by_its_deadline(monkeypatch: Any) -> None:
    """However many passes a wave may wait, it goes once its time is up."""
    import asyncio

    from tessera.audit import groupcommit
    from tessera.audit.groupcommit import WriteUnit

    def waves(max_wait: float) -> list[int]:
        monkeypatch.setattr(groupcommit, "WAVE_PASSES", 1000)
        monkeypatch.setattr(groupcommit, "WAVE_MAX_WAIT", max_wait)
        committer, _ = _counting_committer()
        handed: list[int] = []
        enqueue = committer._enqueue

        def counted(items: list[Any]) -> None:
            handed.append(len(items))
            enqueue(items)

        committer._enqueue = counted  # type: ignore[method-assign]

        async def main() -> None:
            async def request(i: int) -> Any:
                for _ in range(i):
                    await asyncio.sleep(0)
                return await committer.submit_async(WriteUnit(events=[{"i": i}]))

            await asyncio.gather(*(request(i) for i in range(6)))

        try:
            asyncio.run(main())
        finally:
            committer.close()
        return handed

    assert waves(60.0) == [6]
    late = waves(0.0)
    assert late[0] < 6 and sum(late) == 6, late


def test_a_locked_sqlite_database_at_begin_is_a_retryable_error(tmp_path: Any) -> None:
    """BEGIN IMMEDIATE runs on the driver connection; a busy database there must still reach
    the audit committer as SQLAlchemy's OperationalError, which it retries."""
    import sqlite3

    import pytest
    from sqlalchemy.exc import OperationalError

    from tessera.audit.groupcommit import _transient
    from tessera.db import make_engine

    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # the file exists, in WAL mode, before anyone holds it
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.commit()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with engine.connect() as conn:
            conn.connection.driver_connection.execute("PRAGMA busy_timeout=50")
            with pytest.raises(OperationalError) as caught:
                conn.begin()
        assert "database is locked" in str(caught.value)
        assert _transient(caught.value)
    finally:
        holder.close()
        engine.dispose()


def test_the_committer_outlives_a_database_it_cannot_reach() -> None:
    """If no connection can be had, the batch fails (its callers hear why) and the committer
    thread serves the next batch once the database is back."""
    import pytest

    from tessera.audit.groupcommit import WriteUnit

    committer, sizes = _counting_committer()
    working = committer._open
    attempts: list[int] = []

    def flaky_open() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("database unreachable")
        return working()

    committer._open = flaky_open  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            committer.submit(WriteUnit(events=[{"a": 1}])).result(10)
        assert committer.submit(WriteUnit(events=[{"b": 2}])).result(10) == [{"n": 0}]
    finally:
        committer.close()
    assert sizes == [1] and len(attempts) == 2


def test_committed_batches_sign_their_checkpoints(services: Services) -> None:
    """A checkpoint falls due inside a committer batch: its row commits with the batch."""
    from tessera.audit.groupcommit import WriteUnit

    services.audit.options.checkpoint_every = 3
    for i in range(7):
        services.audit.commit_unit(WriteUnit(events=[
            services.audit.event("oauth.token.issued", actor="idn_a", data={"i": i})]))
    services.audit.commit_unit(WriteUnit(events=[  # crosses 9 mid-batch: signs its head, 10
        services.audit.event("oauth.token.issued", actor="idn_a") for _ in range(3)]))
    with services.sessions() as s:
        report = services.audit.verify(s, jwks=services.keys.jwks())
        assert [c.seq for c in services.audit.checkpoints(s)] == [3, 6, 10]
        if services.engine.dialect.name == "postgresql":  # the last batch: one transaction
            xids = {x for (x,) in s.execute(text(
                "SELECT xmin::text FROM audit_events WHERE seq > 7 UNION "
                "SELECT xmin::text FROM audit_checkpoints WHERE seq = 10"))}
            assert len(xids) == 1
    assert report.ok, report.problems
    assert (report.checked, report.checkpoints) == (10, 3)

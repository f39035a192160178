"""The committer's transactions (tessera.db.pipeline.Transactions): on PostgreSQL a batch runs
in a pipeline's implicit transaction; on both databases it is one transaction, whatever breaks
it off and whatever runs in it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tessera.audit.service import _LOCK_HEAD
from tessera.db import make_engine
from tessera.db.engine import make_session_factory
from tessera.db.pipeline import Transactions
from tessera.oauth.deferred import insert_jtis, send_jtis

EXP = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def batch(engine: Engine) -> Iterator[tuple[Session, Transactions]]:
    """A session and its transactions on one connection, as the audit committer holds them."""
    conn = engine.connect()
    session = make_session_factory(engine)(bind=conn)
    txn = Transactions(conn, session)
    yield session, txn
    session.close()
    conn.close()


def _stored(engine: Engine) -> set[str]:
    """What another connection sees (read-only: on SQLite it does not wait for the writer)."""
    with make_session_factory(engine, readonly=True)() as s:
        return {row[0] for row in s.execute(text("SELECT jti FROM used_jtis"))}


def _row(jti: str) -> dict[str, Any]:
    return {"issuer": "iss", "jti": jti, "expires_at": EXP}


def test_postgresql_batches_run_in_a_pipeline(batch: tuple[Session, Transactions],
                                              db_url: str) -> None:
    session, txn = batch
    txn.begin()
    assert txn.pipelined == db_url.startswith("postgresql")
    txn.commit(session)
    assert not txn.pipelined


def test_a_batch_commits_as_one_transaction(batch: tuple[Session, Transactions],
                                            engine: Engine, db_url: str) -> None:
    session, txn = batch
    txn.begin()
    sent = send_jtis(session, [_row("a")])
    # Pipelined, the driver statements run on the connection: the Session begins nothing.
    assert session.in_transaction() == (not db_url.startswith("postgresql"))
    assert insert_jtis(session, [_row("b")]) == {("iss", "b")}  # a flush, not a commit
    assert [len(part.rows()) for part in sent] == [1]
    assert _stored(engine) == set()  # nothing visible before the commit
    txn.commit(session)
    assert _stored(engine) == {"a", "b"}


def test_a_failure_in_python_mid_batch_writes_nothing(batch: tuple[Session, Transactions],
                                                      engine: Engine) -> None:
    """What a pipeline's implicit transaction did is rolled back, not committed by the Sync
    that ends the pipeline."""
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    send_jtis(session, [_row("b")])
    txn.rollback(session)  # as the committer does when apply_units raises
    assert _stored(engine) == set()
    txn.begin()  # the connection serves the next batch
    insert_jtis(session, [_row("c")])
    txn.commit(session)
    assert _stored(engine) == {"c"}


def test_a_failed_statement_fails_the_commit_and_writes_nothing(
        batch: tuple[Session, Transactions], engine: Engine) -> None:
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    send_jtis(session, [_row("a")])  # ON CONFLICT DO NOTHING: no error
    with pytest.raises(Exception, match="(?i)null"):
        _failing(session)
        txn.commit(session)  # on PostgreSQL the error arrives with the Sync
    txn.rollback(session)
    assert _stored(engine) == set()
    txn.begin()
    insert_jtis(session, [_row("c")])
    txn.commit(session)
    assert _stored(engine) == {"c"}


def _run_raw(session: Session, sql: str) -> None:
    """A driver-level statement, as tessera.db.fast runs them (in the pipeline, if any)."""
    from tessera.db.fast import FastStatement

    FastStatement(text(sql)).send(session)


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_sqlalchemy_statements_join_the_batch_transaction(
        batch: tuple[Session, Transactions], engine: Engine, end: str) -> None:
    """A statement SQLAlchemy runs mid-batch (a checkpoint row, a usage stamp) leaves the
    pipeline without committing what the batch did before it."""
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    session.execute(text("INSERT INTO used_jtis (issuer, jti, expires_at) "
                         "VALUES ('iss', 'b', :exp)"), {"exp": EXP})
    assert not txn.pipelined
    assert _stored(engine) == set()
    insert_jtis(session, [_row("c")])
    if end == "commit":
        txn.commit(session)
        assert _stored(engine) == {"a", "b", "c"}
    else:
        txn.rollback(session)
        assert _stored(engine) == set()


def test_the_chain_head_stays_locked_until_the_commit(
        batch: tuple[Session, Transactions], engine: Engine, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's (SQLite's BEGIN IMMEDIATE locks the file)")
    session, txn = batch
    txn.begin()
    ((seq, _hash),) = _LOCK_HEAD.send(session).rows()
    other = make_engine(db_url)
    try:
        with other.connect() as conn:
            with pytest.raises(Exception, match="could not obtain lock"):
                conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT"))
            conn.rollback()
            txn.commit(session)
            assert conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 "
                                     "FOR UPDATE NOWAIT")).scalar() == seq
    finally:
        other.dispose()


def test_the_connection_goes_back_to_its_pool_as_it_came(engine: Engine, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("autocommit is set on PostgreSQL connections only")
    conn = engine.connect()
    raw = conn.connection.driver_connection
    Transactions(conn)
    assert raw.autocommit
    conn.close()
    with engine.connect() as again:
        assert again.connection.driver_connection is raw  # the same pooled connection
        assert not raw.autocommit


def _idle(session: Session) -> bool:
    """The driver connection is out of any pipeline and any transaction (PostgreSQL)."""
    raw = session.connection().connection.driver_connection
    if not hasattr(raw, "pgconn"):
        return True
    from psycopg.pq import TransactionStatus

    return raw.pgconn.pipeline_status == 0 and \
        raw.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_batch_leaves_the_connection_idle(batch: tuple[Session, Transactions],
                                            end: str) -> None:
    session, txn = batch
    for sqlalchemy_too in (False, True):
        txn.begin()
        insert_jtis(session, [_row(f"{end}-{sqlalchemy_too}")])
        if sqlalchemy_too:
            session.execute(text("SELECT 1"))
        getattr(txn, end)(session)
        assert _idle(session)


def test_a_failure_hidden_from_the_batch_still_fails_its_commit(
        batch: tuple[Session, Transactions], engine: Engine) -> None:
    """A statement fails on the server while the batch is pipelined; SQLAlchemy then runs a
    statement (a checkpoint row, a usage stamp) whose caller swallows the error that leaving
    the pipeline raises. The commit must still fail: the server has rolled the batch back, and
    its callers must not be told it is durable."""
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    with pytest.raises(Exception, match="(?i)null"):  # SQLite raises at once
        _failing(session)
        _swallowing(session, "SELECT 1")
        txn.commit(session)
    txn.rollback(session)
    assert _stored(engine) == set()
    assert _idle(session)


def test_orm_objects_added_in_a_batch_commit_in_its_transaction(
        batch: tuple[Session, Transactions], engine: Engine, db_url: str) -> None:
    from tessera.oauth.models import UsedJTIRow

    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("fast")])
    session.add(UsedJTIRow(issuer="iss", jti="orm", expires_at=EXP))
    txn.commit(session)
    assert _stored(engine) == {"fast", "orm"}
    if db_url.startswith("postgresql"):  # one transaction wrote both
        with engine.connect() as conn:
            assert len(set(conn.execute(text("SELECT xmin::text FROM used_jtis")))) == 1


@pytest.mark.parametrize("given", [True, False], ids=["batch-session", "other-session"])
def test_closing_the_session_mid_batch_rolls_back(engine: Engine, given: bool) -> None:
    """psycopg's own rollback sends a Sync, which would commit a pipeline's implicit
    transaction: a session closed mid-batch (the committer thread torn down) must roll back,
    and its connection go back to the pool idle; whether the statements ran on the
    connection directly (the batch's own session) or through the Session."""
    conn = engine.connect()
    session = make_session_factory(engine)(bind=conn)
    Transactions(conn, session if given else None).begin()
    insert_jtis(session, [_row("partial")])
    session.close()
    conn.close()
    assert _stored(engine) == set()
    with make_session_factory(engine)() as again:
        assert _idle(again)


def test_usage_stamps_stay_in_the_pipeline(batch: tuple[Session, Transactions], db_url: str,
                                           engine: Engine) -> None:
    """With many identities nearly every batch carries a usage stamp: the stamps run on the
    driver, in the batch's pipeline, not through SQLAlchemy (which would leave it)."""
    from tessera.identity.models import IdentityRow
    from tessera.identity.service import _TOUCH_IDENTITY
    from tessera.oauth.deferred import run_statements

    with make_session_factory(engine)() as s:
        s.add(IdentityRow(id="idn_s", name="s", kind="human", created_at=EXP, updated_at=EXP))
        s.commit()
    session, txn = batch
    txn.begin()
    run_statements(session, [(0, [(_TOUCH_IDENTITY, {"row_id": "idn_s", "now": EXP})])])
    assert txn.pipelined == db_url.startswith("postgresql")
    txn.commit(session)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT last_seen_at FROM identities WHERE id = 'idn_s'")
                            ).scalar() is not None


def _postgresql_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL aborts a whole transaction on any failed statement")


def _swallowing(session: Session, sql: str) -> None:
    """A statement through SQLAlchemy whose caller logs any error and goes on."""
    try:
        session.execute(text(sql))
    except Exception:  # noqa: BLE001, S110
        pass


def _failing(session: Session) -> None:
    """A statement that fails at the server, its error not yet read (pipelined)."""
    _run_raw(session, "INSERT INTO used_jtis (issuer, jti, expires_at) "
                      "VALUES ('iss', 'bad', NULL)")


def test_a_failure_already_read_and_handled_still_fails_the_commit(
        batch: tuple[Session, Transactions], engine: Engine, db_url: str) -> None:
    """The server rolls the whole implicit transaction back, and psycopg raises each error
    once: the commit must not report the batch committed because nothing is left to raise."""
    from sqlalchemy import column

    from tessera.db.fast import FastStatement

    _postgresql_only(db_url)
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    with pytest.raises(Exception, match="division by zero"):
        FastStatement(text("SELECT 1 / 0 AS y").columns(column("y"))).send(session).rows()
    with pytest.raises(Exception, match="failed"):
        txn.commit(session)
    txn.rollback(session)
    assert _stored(engine) == set()
    assert _idle(session)


def test_statements_after_a_hidden_failure_are_not_committed_one_by_one(
        batch: tuple[Session, Transactions], engine: Engine, db_url: str) -> None:
    """Once the batch's transaction is gone (rolled back by the Sync that left the pipeline),
    the statements the batch still runs must not commit each on its own."""
    from tessera.oauth.models import UsedJTIRow

    _postgresql_only(db_url)
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    _failing(session)
    _swallowing(session, "SELECT 1")
    insert_jtis(session, [_row("driver-after")])
    session.add(UsedJTIRow(issuer="iss", jti="orm-after", expires_at=EXP))
    with pytest.raises(Exception, match="(?i)null"):
        txn.commit(session)
    txn.rollback(session)
    assert _stored(engine) == set()


def test_a_failure_after_leaving_the_pipeline_fails_the_commit(
        batch: tuple[Session, Transactions], engine: Engine, db_url: str) -> None:
    _postgresql_only(db_url)
    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    session.execute(text("SELECT 1"))  # leaves the pipeline: an ordinary transaction now
    assert not txn.pipelined
    _swallowing(session, "SELECT 1 / 0")
    with pytest.raises(Exception, match="aborted"):
        txn.commit(session)
    txn.rollback(session)
    assert _stored(engine) == set()


def test_a_transient_failure_is_retried_on_a_new_connection(services: Any,
                                                           db_url: str) -> None:
    """psycopg counts a statement as prepared once its Parse is queued; in a pipeline whose
    earlier statement failed the server skipped that Parse, and each later run of the
    statement on that connection fails. Every batch here fails once (a serialization failure,
    which the committer retries) before the chain head's lock: all must commit."""
    from sqlalchemy import column

    from tessera.audit.groupcommit import WriteUnit
    from tessera.db.fast import FastStatement

    _postgresql_only(db_url)
    fail = FastStatement(text(
        "DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '40001'; END $$"))
    noop = FastStatement(text("SELECT 1 AS one").columns(column("one")))
    failed: set[int] = set()

    def hook(session: Session, items: list[tuple[int, list[Any]]]) -> Any:
        first = items[0][1][0] not in failed
        failed.add(items[0][1][0])
        sent = (fail if first else noop).send(session)
        return lambda _refused: (sent.rows(), {})[1]

    services.audit.register_hook("test.flaky", hook, pipelined=True)
    for i in range(10):
        services.audit.commit_unit(WriteUnit(
            events=[services.audit.event("oauth.token.issued", data={"i": i})],
            intents={"test.flaky": [i]}))
    assert failed == set(range(10))
    with services.sessions() as s:
        report = services.audit.verify(s)
    assert report.ok and report.checked == 10


def test_a_failed_commit_leaves_the_session_off_the_direct_path(
        batch: tuple[Session, Transactions]) -> None:
    """A batch whose commit raised is over: the session's statements no longer run on the
    connection directly, whether or not its caller rolls back."""
    from tessera.db.fast import DIRECT

    session, txn = batch
    txn.begin()
    insert_jtis(session, [_row("a")])
    with pytest.raises(Exception, match="(?i)null"):
        _failing(session)
        txn.commit(session)
    assert DIRECT not in session.info
    txn.rollback(session)

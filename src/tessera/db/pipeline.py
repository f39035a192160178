"""Transactions of one connection, in PostgreSQL's pipeline mode where the driver offers it.

The audit committer runs the same short transaction for every batch: a few checks and inserts
whose results decide what it writes next, the event inserts, commit. On PostgreSQL the
committer's CPU goes mostly to psycopg's work per statement and per round trip (a send, a
poll, a wake-up and a receive each), not to the statements: run one at a time with BEGIN and
COMMIT, a batch was seven round trips. In libpq's pipeline mode the client sends statements
without waiting for their results, and with no BEGIN the statements up to the next Sync
message form one implicit transaction, which the Sync commits, or rolls back if any of them
failed (PostgreSQL's protocol documentation, "Pipelining"). A batch then costs two round
trips: one that sends the checks and the head's lock and reads their results
(`tessera.db.fast.Sent.rows()` asks for a flush, which does not end the transaction), and the
Sync, which sends the writes and commits them.

Written by hand because SQLAlchemy has no notion of pipelines and cannot run in one: it
reads a cursor's description right after executing, and in pipeline mode that is only known
once the result has arrived. So only the driver-level statements of `tessera.db.fast` ride the
pipeline. The driver connection is put in autocommit mode (SQLAlchemy restores it when the
connection goes back to its pool), so that psycopg sends no BEGIN of its own. If SQLAlchemy
executes a statement during a batch (an ORM flush, a hook's own statement), a BEGIN is
queued first, which turns the implicit transaction into an ordinary one, earlier statements
included; the pipeline is left (one Sync, which commits nothing inside a transaction block)
and the rest of the batch runs as usual, up to an explicit COMMIT.

SQLite, and PostgreSQL without pipeline support, take the plain path: SQLAlchemy begins (on
SQLite through the `begin` hook of `tessera.db.engine`) and commits.
"""

from __future__ import annotations

import weakref
from typing import Any

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from tessera.db.fast import DIRECT


class BatchAborted(Exception):
    """The batch's transaction ended without committing (a statement failed in it)."""


class Transactions:
    """`begin`, `commit` and `rollback` of the transactions `session` runs on `conn`.

    Every batch ends with `commit` or `rollback`, whatever broke it off: psycopg's own
    rollback sends a Sync first, and a Sync commits an implicit transaction."""

    def __init__(self, conn: Connection, session: Session | None = None) -> None:
        """`session`, bound to `conn`, is the one the batches run in: in a pipelined batch
        its driver-level statements (`tessera.db.fast`) then use `conn` directly, and a batch
        of nothing but those commits without the Session beginning or committing a
        transaction of its own."""
        self.conn = conn
        self._session = session
        self._raw: Any = None
        self._pipe: Any = None  # the pipeline of the open implicit transaction
        self._explicit = False  # a BEGIN turned the batch's transaction into a block
        self._failed: BaseException | None = None  # what ended the batch's transaction
        if conn.dialect.name == "postgresql" and psycopg.Pipeline.is_supported():
            conn.execution_options(isolation_level="AUTOCOMMIT")
            self._raw = conn.connection.driver_connection
            event.listen(conn, "before_cursor_execute", self._before_sqlalchemy)
            event.listen(conn, "rollback", self._abandon)
            # A batch whose statements ran on the connection directly has no SQLAlchemy
            # transaction for closing the connection to roll back: the pool's reset does.
            conn.connection.info[_OPEN] = weakref.ref(self)

    @property
    def pipelines(self) -> bool:
        """Whether this connection's batches run in pipeline mode."""
        return self._raw is not None

    @property
    def pipelined(self) -> bool:
        """Whether the open transaction is a pipeline's implicit one."""
        return self._pipe is not None

    def begin(self) -> None:
        self._explicit, self._failed = False, None
        if self._raw is not None:
            pipe = self._raw.pipeline()
            pipe.__enter__()
            self._pipe = pipe
            if self._session is not None:
                self._session.info[DIRECT] = self.conn

    def commit(self, session: Session) -> None:
        """Commit; raises the error of any statement that failed (nothing is committed)."""
        session.info.pop(DIRECT, None)  # the batch's statements are done, whatever follows
        if self._failed is not None:
            raise self._failed  # the server rolled the batch back (see _before_sqlalchemy)
        session.flush()  # ORM objects added during the batch are written in it, not after
        if self._failed is not None:  # (the flush may have left the pipeline)
            raise self._failed
        if self._pipe is not None:
            if self._raw.pgconn.pipeline_status == PipelineStatus.ABORTED:
                # A statement failed and its error was read (and handled) already: the Sync
                # would raise nothing, and roll the batch back.
                raise BatchAborted("a statement of the batch failed")
            self._leave()  # the Sync: sends the writes, commits, raises what failed
        elif self._explicit:
            self._explicit = False
            if self._raw.info.transaction_status != TransactionStatus.INTRANS:
                raise BatchAborted("the batch's transaction was aborted")
            status = self._raw.execute("COMMIT", prepare=False).statusmessage
            if status != "COMMIT":  # an aborted block answers ROLLBACK
                raise BatchAborted(f"the batch's transaction ended with {status}")
        if session.in_transaction() or session.info:
            # SQLAlchemy's own state (the driver has nothing left to commit), and its
            # after_commit hooks, for which something left a mark in `info`.
            session.commit()

    def rollback(self, session: Session) -> None:
        """Roll back; safe whatever state the batch broke off in."""
        try:
            self._abandon()
        finally:
            self._explicit, self._failed = False, None
            session.info.pop(DIRECT, None)
            session.rollback()  # the driver sends ROLLBACK if a transaction block is open

    def _abandon(self, *_args: Any) -> None:
        """Roll back an open pipeline's implicit transaction: a Sync would commit what it did
        so far, so turn it into a block and roll that back (both skipped if a statement
        failed: then the Sync rolls back). Also SQLAlchemy's `rollback` hook, so that closing
        the session or connection mid-batch rolls back too."""
        if self._pipe is None:
            return
        try:
            self._raw.execute("BEGIN", prepare=False)
            self._raw.execute("ROLLBACK", prepare=False)
        finally:
            try:
                self._leave()
            except Exception:  # noqa: BLE001 - the error that brought us here is reported
                pass  # by the caller
            if self._raw.pgconn.pipeline_status:  # could not leave: nothing sent on it can
                self._raw.close()  # be trusted; closing it rolls back

    def _leave(self) -> None:
        pipe, self._pipe = self._pipe, None
        pipe.__exit__(None, None, None)

    def _before_sqlalchemy(self, *_args: Any) -> None:
        """SQLAlchemy is about to run a statement: leave the pipeline inside a transaction
        block. If the batch already failed, the Sync has rolled it back: that error is kept
        for `commit` to raise, so that no caller's handler of the statement (a checkpoint
        that "could not be signed") can turn the lost batch into a committed one."""
        if self._pipe is None:
            return
        failed: BaseException | None = None
        try:
            self._raw.execute("BEGIN", prepare=False)
        except BaseException as exc:  # noqa: BLE001 - an earlier statement's error, read now
            failed = exc
        try:
            self._leave()
        except BaseException as exc:  # noqa: BLE001 - keep the first error: it names the cause
            failed = failed or exc  # (and its SQLSTATE decides whether the batch is retried)
        if failed is None and self._raw.info.transaction_status != TransactionStatus.INTRANS:
            failed = BatchAborted("the batch's transaction ended before its statements did")
        if failed is not None:
            self._failed = failed
            try:  # the batch is gone: what else it runs goes into a block that is rolled back
                if self._raw.info.transaction_status == TransactionStatus.IDLE:
                    self._raw.execute("BEGIN", prepare=False)
                    self._explicit = True
            except Exception:  # noqa: BLE001 - `_failed` fails the commit whatever happens
                pass
            raise failed
        self._explicit = True


_OPEN = "tessera_pipeline"  # the pooled connection's Transactions, for `_reset`


@event.listens_for(Pool, "reset")
def _reset(_dbapi_connection: Any, record: Any, _state: Any) -> None:
    """A connection goes back to its pool (or is reset) mid-batch: roll the batch back before
    the pool's own rollback, whose Sync would commit a pipeline's implicit transaction."""
    ref = record.info.get(_OPEN) if record is not None else None
    txn = ref() if ref is not None else None
    if txn is not None:
        txn._abandon()


__all__ = ["BatchAborted", "Transactions"]

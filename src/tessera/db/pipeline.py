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
executes a statement during a batch (a checkpoint's row, a hook's own statement), a BEGIN is
queued first, which turns the implicit transaction into an ordinary one, earlier statements
included; the pipeline is left (one Sync, which commits nothing inside a transaction block)
and the rest of the batch runs as usual, up to an explicit COMMIT.

SQLite, and PostgreSQL without pipeline support, take the plain path: SQLAlchemy begins (on
SQLite through the `begin` hook of `tessera.db.engine`) and commits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session


class Transactions:
    """`begin`, `commit` and `rollback` of the transactions `session` runs on `conn`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._raw: Any = None
        self._pipe: Any = None  # the pipeline of the open implicit transaction
        self._explicit = False  # a BEGIN turned the batch's transaction into a block
        if conn.dialect.name == "postgresql":
            import psycopg

            if psycopg.Pipeline.is_supported():
                conn.execution_options(isolation_level="AUTOCOMMIT")
                self._raw = conn.connection.driver_connection
                event.listen(conn, "before_cursor_execute", self._before_sqlalchemy)

    @property
    def pipelined(self) -> bool:
        """Whether the open transaction is a pipeline's implicit one."""
        return self._pipe is not None

    def begin(self) -> None:
        if self._raw is not None:
            self._pipe = self._raw.pipeline()
            self._pipe.__enter__()
            self._explicit = False

    def commit(self, session: Session) -> None:
        """Commit; raises the error of any statement that failed (nothing is committed)."""
        if self._pipe is not None:
            self._leave()  # the Sync: sends the writes, commits, raises what failed
        elif self._explicit:
            self._explicit = False
            self._raw.execute("COMMIT", prepare=False)
        session.commit()  # SQLAlchemy's own state (the driver has nothing left to commit)

    def rollback(self, session: Session) -> None:
        """Roll back; safe whatever state the batch broke off in."""
        if self._pipe is not None:
            # A Sync would commit what an implicit transaction did so far: turn it into a
            # block and roll that back (both skipped if a statement failed: then the Sync
            # rolls back).
            try:
                self._raw.execute("BEGIN", prepare=False)
                self._raw.execute("ROLLBACK", prepare=False)
            finally:
                try:
                    self._leave()
                except Exception:  # noqa: BLE001 - the error that brought us here is reported
                    pass
        self._explicit = False
        session.rollback()  # the driver sends ROLLBACK if a transaction block is open

    def _leave(self) -> None:
        pipe, self._pipe = self._pipe, None
        pipe.__exit__(None, None, None)

    def _before_sqlalchemy(self, *_args: Any) -> None:
        if self._pipe is not None:
            self._raw.execute("BEGIN", prepare=False)
            self._explicit = True
            self._leave()


__all__ = ["Transactions"]

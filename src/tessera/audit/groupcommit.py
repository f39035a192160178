"""Group commit: one committer thread writes the units of many requests in one transaction.

A caller hands over a `WriteUnit` (its audit events, plus checks and small writes other
packages registered hooks for, e.g. the token endpoint's replay-cache insert) and waits on a
future; the future resolves only after the transaction holding them has committed, so no
response leaves before its writes are durable. A unit a hook refuses is left out of the batch
and its future gets the hook's exception; the others commit. While one batch commits, the next
one gathers, so the batch grows with the load and each commit (one fsync on PostgreSQL) pays for
many requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tessera.db.pipeline import Transactions
from tessera.threadname import name_os_thread

log = logging.getLogger("tessera.audit")


@dataclass
class WriteUnit:
    """What one request commits atomically: audit events, and intents keyed by hook name."""

    events: list[dict[str, Any]] = field(default_factory=list)
    intents: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, hook: str, intent: Any) -> None:
        self.intents.setdefault(hook, []).append(intent)


# Applies a batch in one transaction; per unit, its written events or the exception refusing it.
ApplyUnits = Callable[[Session, list[WriteUnit]], list["list[dict[str, Any]] | Exception"]]
Result = list[dict[str, Any]]
Waiter = Future[Result] | asyncio.Future[Result]
RETRIES = 3
# A wave waits for more units at most this many loop iterations, and this long (s).
WAVE_PASSES = 8
WAVE_MAX_WAIT = 0.002
# PostgreSQL: deadlock_detected, serialization_failure; SQLite: "database is locked".
_TRANSIENT_SQLSTATES = {"40P01", "40001"}


def _transient(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc  # a driver error that reached us unwrapped
    if getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(orig)


def _settle(outcomes: list[tuple[Waiter, Result | BaseException]]) -> None:
    """Resolve thread futures directly, and each event loop's futures in one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for fut, outcome in outcomes:
        if isinstance(fut, asyncio.Future):
            by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            log.warning("audit commit outcome for a closed event loop dropped")


def _settle_on_loop(items: list[tuple[asyncio.Future[Result], Any]]) -> None:
    for fut, outcome in items:
        if fut.done():  # the awaiting request was cancelled (client went away)
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


class GroupCommitter:
    """Batches `submit`ted events into shared transactions on a background thread."""

    def __init__(self, sessions: sessionmaker[Session], apply: ApplyUnits, *,
                 max_batch: int = 512,
                 after_commit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self._sessions = sessions
        self._apply = apply
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._cond = threading.Condition()
        self._queue: list[tuple[WriteUnit, Waiter]] = []
        self._waves: dict[asyncio.AbstractEventLoop, list[tuple[WriteUnit, Waiter]]] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.events = 0

    def submit(self, unit: WriteUnit) -> Future[Result]:
        fut: Future[Result] = Future()
        self._enqueue([(unit, fut)])
        return fut

    def submit_async(self, unit: WriteUnit) -> asyncio.Future[Result]:
        """`submit` from a coroutine: the future belongs to the running loop, and the committer
        settles all of a batch's futures of one loop with a single wake-up of that loop.

        Units from a loop are handed over in waves: the first unit of a wave schedules the
        hand-over, which waits while the loop's iterations keep adding units (each iteration
        serves every request whose bytes have arrived) and then passes the whole wave on at
        once. Under load a batch then holds the requests that arrived together instead of the
        one or two the committer found the moment it woke; idle, the wait is two passes of an
        otherwise empty loop (microseconds). A wave never waits more than `WAVE_PASSES`
        iterations or `WAVE_MAX_WAIT` seconds."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        if self._stopped:
            raise RuntimeError("the audit committer is stopped")
        wave = self._waves.get(loop)
        if wave is None:
            wave = self._waves[loop] = []
            loop.call_soon(self._hand_over, loop, wave, 0, 0, loop.time() + WAVE_MAX_WAIT)
        wave.append((unit, fut))
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop, wave: list[tuple[WriteUnit, Waiter]],
                   seen: int, passes: int, deadline: float) -> None:
        if seen < len(wave) < self._max_batch and passes < WAVE_PASSES and \
                loop.time() < deadline:
            loop.call_soon(self._hand_over, loop, wave, len(wave), passes + 1, deadline)
            return
        del self._waves[loop]
        try:
            self._enqueue(wave)
        except RuntimeError as exc:  # stopped meanwhile: nobody will write these
            for _, fut in wave:
                if not fut.done():
                    fut.set_exception(exc)

    def _enqueue(self, items: list[tuple[WriteUnit, Waiter]]) -> None:
        with self._cond:
            if self._stopped:
                raise RuntimeError("the audit committer is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tessera-audit-commit",
                                                daemon=True)
                self._thread.start()
            self._queue.extend(items)
            self._cond.notify()

    def append_now(self, events: list[dict[str, Any]], timeout: float = 60.0
                   ) -> list[dict[str, Any]]:
        """Submit and wait until the events are committed; raises if the commit failed."""
        return self.submit(WriteUnit(events)).result(timeout)

    def _take(self) -> list[tuple[WriteUnit, Waiter]]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            taken, count = [], 0
            while self._queue and count < self._max_batch:
                item = self._queue.pop(0)
                taken.append(item)
                count += len(item[0].events) or 1
            return taken

    def _loop(self) -> None:
        # One connection and one Session for the thread's life: a pool checkout and a Session
        # per batch are a measurable share of a small batch. After a failed batch both are
        # replaced (the connection may be the thing that failed); if none can be had, the
        # batch fails and the thread lives on for the next one.
        name_os_thread("tessera-commit")
        opened: tuple[Session, Transactions] | None = None
        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                if opened is None:
                    try:
                        opened = self._open()
                    except Exception as exc:  # database unreachable: fail this batch, go on
                        log.exception("audit committer cannot connect")
                        _settle([(fut, exc) for _, fut in batch])
                        continue
                opened = self._commit_batch(opened, batch)
        finally:
            if opened is not None:
                opened[0].close()
                opened[1].conn.close()

    def _open(self) -> tuple[Session, Transactions]:
        engine = self._sessions.kw["bind"]
        conn = engine.connect()
        try:
            session = self._sessions(bind=conn)
            # Pipelined on PostgreSQL: two round trips a batch.
            return session, Transactions(conn, session)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _discard(session: Session, txn: Transactions) -> None:
        session.close()
        txn.conn.invalidate()
        txn.conn.close()

    def _commit_batch(self, opened: tuple[Session, Transactions],
                      batch: list[tuple[WriteUnit, Waiter]]
                      ) -> tuple[Session, Transactions] | None:
        """Commit `batch`, retrying transient failures; the session and transactions to use
        next, or None when the batch failed (they are discarded then)."""
        session, txn = opened
        units = [unit for unit, _ in batch]
        for attempt in range(1, RETRIES + 1):
            try:
                txn.begin()
                results = self._apply(session, units)
                txn.commit(session)
                break
            except Exception as exc:
                try:
                    txn.rollback(session)
                except Exception:  # noqa: BLE001 - the connection is replaced below
                    pass
                if attempt < RETRIES and _transient(exc):
                    # A deadlock victim or a serialization failure: nothing was written, the
                    # same batch is applied again (the units are pure data). A pipelined
                    # attempt is retried on a new connection: psycopg counts a statement as
                    # prepared once its Parse is queued, which the server skipped if an
                    # earlier statement failed, and every later run would fail.
                    log.warning("audit group commit retried after %s", type(exc).__name__)
                    if txn.pipelines:
                        self._discard(session, txn)
                        try:
                            session, txn = self._open()
                        except Exception as reopen:  # database unreachable: fail the batch
                            log.exception("audit committer cannot connect")
                            _settle([(fut, reopen) for _, fut in batch])
                            return None
                    continue
                log.exception("audit group commit failed")
                _settle([(fut, exc) for _, fut in batch])
                self._discard(session, txn)  # the connection may be the thing that failed
                return None
            except BaseException as exc:  # the thread is being torn down: roll back first
                try:  # (on PostgreSQL closing the session mid-pipeline would commit)
                    txn.rollback(session)
                finally:
                    stopped = RuntimeError("the audit committer stopped")
                    stopped.__cause__ = exc
                    _settle([(fut, stopped) for _, fut in batch])
                raise
        self.batches += 1
        written = [e for result in results if not isinstance(result, Exception)
                   for e in result]
        _settle([(fut, result) for (_, fut), result in zip(batch, results)])
        self.events += len(written)
        if self._after_commit and written:
            try:
                self._after_commit(written)
            except Exception:
                log.exception("audit subscriber failed")
        return session, txn

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

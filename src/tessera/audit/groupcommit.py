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

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

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
        self._queue: list[tuple[WriteUnit, Future[Result]]] = []
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.events = 0

    def submit(self, unit: WriteUnit) -> Future[Result]:
        fut: Future[Result] = Future()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the audit committer is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tessera-audit-commit",
                                                daemon=True)
                self._thread.start()
            self._queue.append((unit, fut))
            self._cond.notify()
        return fut

    def append_now(self, events: list[dict[str, Any]], timeout: float = 60.0
                   ) -> list[dict[str, Any]]:
        """Submit and wait until the events are committed; raises if the commit failed."""
        return self.submit(WriteUnit(events)).result(timeout)

    def _take(self) -> list[tuple[WriteUnit, Future[Result]]]:
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
        while True:
            batch = self._take()
            if not batch:
                return
            units = [unit for unit, _ in batch]
            try:
                with self._sessions() as session:
                    results = self._apply(session, units)
                    session.commit()
            except Exception as exc:
                log.exception("audit group commit failed")
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            self.batches += 1
            written: list[dict[str, Any]] = []
            for (_, fut), result in zip(batch, results):
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    written.extend(result)
                    fut.set_result(result)
            self.events += len(written)
            if self._after_commit and written:
                try:
                    self._after_commit(written)
                except Exception:
                    log.exception("audit subscriber failed")

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

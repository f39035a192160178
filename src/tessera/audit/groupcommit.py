"""Group commit: one committer thread appends the events of many requests in one transaction.

A caller hands its events over and waits on a future; the future resolves only after the
transaction holding them has committed, so no response leaves before its event is durable.
While one batch commits, the next one gathers, so the batch grows with the load and each
commit (one fsync on PostgreSQL) pays for many events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("tessera.audit")
AppendBatch = Callable[[Session, list[dict[str, Any]]], list[dict[str, Any]]]


class GroupCommitter:
    """Batches `submit`ted events into shared transactions on a background thread."""

    def __init__(self, sessions: sessionmaker[Session], append: AppendBatch, *,
                 max_batch: int = 512,
                 after_commit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self._sessions = sessions
        self._append = append
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._cond = threading.Condition()
        self._queue: list[tuple[list[dict[str, Any]], Future[list[dict[str, Any]]]]] = []
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.events = 0

    def submit(self, events: list[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        fut: Future[list[dict[str, Any]]] = Future()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the audit committer is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tessera-audit-commit",
                                                daemon=True)
                self._thread.start()
            self._queue.append((events, fut))
            self._cond.notify()
        return fut

    def append_now(self, events: list[dict[str, Any]], timeout: float = 60.0
                   ) -> list[dict[str, Any]]:
        """Submit and wait until the events are committed; raises if the commit failed."""
        return self.submit(events).result(timeout)

    def _take(self) -> list[tuple[list[dict[str, Any]], Future[list[dict[str, Any]]]]]:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            taken, count = [], 0
            while self._queue and count < self._max_batch:
                item = self._queue.pop(0)
                taken.append(item)
                count += len(item[0])
            return taken

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            flat = [e for events, _ in batch for e in events]
            try:
                with self._sessions() as session:
                    written = self._append(session, flat)
                    session.commit()
            except Exception as exc:
                log.exception("audit group commit failed")
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            self.batches += 1
            self.events += len(flat)
            i = 0
            for events, fut in batch:
                fut.set_result(written[i:i + len(events)])
                i += len(events)
            if self._after_commit:
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

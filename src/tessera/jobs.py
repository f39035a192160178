"""Periodic jobs inside `tessera serve`: a daemon thread that runs each job on its interval.

Jobs here must be idempotent (safe on every node at once); jobs that must run on exactly one
node are wrapped with `exclusive_job`: a PostgreSQL advisory lock (`pg_try_advisory_lock`) makes
one node the leader for that run, and a `job_runs` row keeps the job to one run per interval
across every node. On SQLite (a single node) the lock is trivially held.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, String, text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from tessera.clock import Clock
from tessera.db.base import Base
from tessera.threadname import name_os_thread

log = logging.getLogger("tessera.jobs")


@dataclass
class Job:
    name: str
    interval: float
    run: Callable[[], object]


class JobRunner:
    def __init__(self, jobs: list[Job]) -> None:
        self._jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        for job in self._jobs:
            try:
                job.run()
            except Exception:  # noqa: BLE001 - one failing job must not stop the others
                log.exception("job %s failed", job.name)

    def start(self) -> None:
        if not self._jobs:
            return
        self._thread = threading.Thread(target=self._loop, name="tessera-jobs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        name_os_thread("tessera-jobs")
        next_run = {job.name: 0.0 for job in self._jobs}
        elapsed = 0.0
        tick = min(job.interval for job in self._jobs)
        while not self._stop.wait(tick if elapsed else 0):
            for job in self._jobs:
                if elapsed >= next_run[job.name]:
                    try:
                        job.run()
                    except Exception:  # noqa: BLE001
                        log.exception("job %s failed", job.name)
                    next_run[job.name] = elapsed + job.interval
            elapsed += tick

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


class JobRunRow(Base):
    """When each exclusive job last started, and on which node."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_started_at: Mapped[datetime]
    node_id: Mapped[str] = mapped_column(String(100))


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock, derived from the job name."""
    digest = hashlib.sha256(b"tessera.job:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def leader_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yield True when this node holds the cluster-wide lock `name` (never waits for it)."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = advisory_key(name)
    with engine.connect() as conn:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def exclusive_job(name: str, interval: float, run: Callable[[], object], *,
                  engine: Engine, sessions: sessionmaker[Session], clock: Clock,
                  node_id: str) -> Job:
    """A job that runs on one node at a time, at most once per interval across all nodes."""

    def guarded() -> bool:
        with leader_lock(engine, name) as leader:
            if not leader:
                log.debug("job %s: another node holds the lock", name)
                return False
            now = clock.now()
            with sessions() as session:
                row = session.get(JobRunRow, name)
                if row is not None and row.last_started_at > now - timedelta(
                        seconds=interval / 2):
                    return False
                if row is None:
                    session.add(JobRunRow(name=name, last_started_at=now, node_id=node_id))
                else:
                    row.last_started_at, row.node_id = now, node_id
                session.commit()
            run()
            return True

    return Job(name, interval, guarded)

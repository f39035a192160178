"""Periodic jobs inside `tessera serve`: a daemon thread that runs each job on its interval.

Jobs here must be idempotent (safe on every node at once); jobs that must run on exactly one
node take a database lock first (later issues add those).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

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

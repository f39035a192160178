"""The periodic jobs of `tessera serve`: checkpoint, monitor pass, CAEP delivery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tessera.container import Services
from tessera.watch import watch_jobs


def test_watch_jobs_checkpoint_process_and_deliver(services: Services,
                                                   make_identity: Callable[..., Any]) -> None:
    make_identity("agent-jobs")
    jobs = {j.name: j for j in watch_jobs(services)}
    assert set(jobs) == {"audit-checkpoint", "monitor", "caep-delivery"}
    for job in jobs.values():
        job.run()
    assert services.monitor is not None
    with services.sessions() as s:
        head = services.audit.head(s)
        assert [c.seq for c in services.audit.checkpoints(s)] == [head[0]]
        assert services.monitor.process(s) == 0  # the job consumed everything

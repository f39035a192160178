"""Periodic work of the audit and the monitor, for `tessera serve` (see tessera.jobs).

Checkpoints every T seconds, the monitor's pass over new audit events (woken early when an
event commits), and CAEP push delivery with retries.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tessera.jobs import Job

if TYPE_CHECKING:
    from tessera.container import Services

log = logging.getLogger("tessera.watch")


def watch_jobs(services: Services) -> list[Job]:
    settings = services.settings

    def checkpoint() -> None:
        with services.sessions() as session:
            services.audit.checkpoint(session)
            session.commit()

    def monitor() -> None:
        if services.monitor is None:
            return
        services.monitor.wakeup.clear()
        while True:
            with services.sessions() as session:
                done = services.monitor.process(session)
                session.commit()
            if done < 2000:
                return

    def deliver() -> None:
        if services.caep is not None:
            services.caep.deliver_due(services.sessions)

    jobs = [Job("audit-checkpoint", settings.audit.checkpoint_seconds, checkpoint)]
    if settings.monitor.enabled:
        jobs += [Job("monitor", settings.monitor.interval, monitor),
                 Job("caep-delivery", 2.0, deliver)]
    return jobs

"""Tessera's threads carry OS names (tessera.threadname): `top -H`, `ps -L` and the
benchmarks tell the audit committer and the jobs thread from the event loop."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from tessera.audit.groupcommit import GroupCommitter
from tessera.jobs import Job, JobRunner
from tessera.threadname import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_names_itself_in_the_os() -> None:
    seen: list[str] = []

    def body() -> None:
        name_os_thread("tessera-a-very-long-name")  # the OS keeps 15 bytes
        seen.append(_comm(threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["tessera-a-very-"]


def test_the_audit_committer_thread_is_named(services: object) -> None:
    committer = services.audit.committer  # type: ignore[attr-defined]
    assert isinstance(committer, GroupCommitter)
    committer.append_now([])  # starts the thread
    thread = committer._thread
    assert thread is not None and thread.native_id is not None
    assert _comm(thread.native_id) == "tessera-commit"


def test_the_jobs_thread_is_named() -> None:
    seen: list[str] = []
    ran = threading.Event()

    def job() -> None:
        seen.append(_comm(threading.get_native_id()))
        ran.set()

    runner = JobRunner([Job("probe", 60.0, job)])
    runner.start()
    try:
        assert ran.wait(10)
    finally:
        runner.stop()
    assert seen == ["tessera-jobs"]

"""Exclusive jobs: one node at a time, once per interval, across nodes sharing PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tessera.clock import FakeClock
from tessera.config import Settings
from tessera.container import Services, build
from tessera.jobs import JobRunner, exclusive_job, leader_lock
from tessera.keys.software import SoftwareKeyProvider


@pytest.fixture
def nodes(settings: Settings, clock: FakeClock, master_key: bytes) -> Iterator[list[Services]]:
    """Two server nodes: separate Services, separate engines (connection pools), one DB."""
    made = [build(settings.model_copy(update={"node_id": f"node-{i}"}), clock=clock,
                  provider=SoftwareKeyProvider(master_key), trust_domain="example.org")
            for i in (1, 2)]
    yield made
    for svc in made:
        svc.close()


def job_for(node: Services, name: str, body: object) -> JobRunner:
    return JobRunner([exclusive_job(name, 60.0, body, engine=node.engine,  # type: ignore[arg-type]
                                    sessions=node.sessions, clock=node.clock,
                                    node_id=node.settings.node_id)])


def test_only_one_node_runs_a_job_while_another_holds_it(nodes: list[Services],
                                                         db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the advisory lock matters with several nodes on PostgreSQL")
    ran: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def body_for(node: str) -> object:
        def body() -> None:
            ran.append(node)
            inside.set()
            release.wait(30)
        return body

    first = threading.Thread(target=job_for(nodes[0], "sweep", body_for("node-1")).run_once)
    first.start()
    assert inside.wait(30)
    # Node 2 ticks while node 1 is inside the job: it must skip, not wait and not run.
    second = threading.Thread(target=job_for(nodes[1], "sweep", body_for("node-2")).run_once)
    second.start()
    second.join(30)
    assert not second.is_alive()
    release.set()
    first.join(30)
    assert ran == ["node-1"]


def test_a_job_runs_once_per_interval_across_nodes(nodes: list[Services],
                                                   clock: FakeClock) -> None:
    ran: list[str] = []
    runners = [job_for(n, "expire", lambda n=n: ran.append(n.settings.node_id)) for n in nodes]
    threads = [threading.Thread(target=r.run_once) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ran) == 1
    clock.advance(61)
    runners[1].run_once()
    runners[0].run_once()
    assert len(ran) == 2 and ran[1] == "node-2"


def test_leader_lock_is_exclusive_on_postgresql(nodes: list[Services], db_url: str) -> None:
    with leader_lock(nodes[0].engine, "x") as first:
        with leader_lock(nodes[1].engine, "x") as second:
            assert first is True
            assert second is (not db_url.startswith("postgresql"))
    with leader_lock(nodes[1].engine, "x") as again:
        assert again is True


NODE_SCRIPT = """
from tessera.config import Settings
from tessera.container import build
from tessera.db.meta import set_meta
from tessera.jobs import exclusive_job

settings = Settings()
svc = build(settings)

def body():
    with svc.sessions() as session:
        set_meta(session, "ran-" + settings.node_id, "1")
        session.commit()

job = exclusive_job("two-process", 3600, body, engine=svc.engine, sessions=svc.sessions,
                    clock=svc.clock, node_id=settings.node_id)
print("ran" if job.run() else "skipped")
svc.close()
"""


@pytest.mark.slow
def test_two_server_processes_run_a_job_once(db_url: str, master_key: bytes,
                                             tmp_path: object) -> None:
    import os
    import subprocess
    import sys

    from sqlalchemy import select

    from tessera.db import make_engine, make_session_factory
    from tessera.db.meta import MetaRow

    if not db_url.startswith("postgresql"):
        pytest.skip("several server processes share PostgreSQL, not SQLite")
    procs = []
    for node in ("proc-a", "proc-b"):
        env = {**os.environ, "TESSERA_DATABASE_URL": db_url, "TESSERA_NODE_ID": node,
               "TESSERA_MASTER_KEY": master_key.decode(),
               "TESSERA_DATA_DIR": str(tmp_path)}
        procs.append(subprocess.Popen([sys.executable, "-c", NODE_SCRIPT], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        outputs.append(stdout.strip())
    assert sorted(outputs) == ["ran", "skipped"]
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            ran = session.scalars(select(MetaRow.key).where(MetaRow.key.like("ran-%"))).all()
    finally:
        engine.dispose()
    assert len(ran) == 1

"""`tessera serve --workers N` (tessera.serving): one SO_REUSEPORT socket per worker process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera import serving
from tests.cli.test_e2e_server import TESSERA, cli, env_for, free_port

pytestmark = pytest.mark.skipif(not serving.available(), reason="SO_REUSEPORT balancing is Linux's")


def _children(pid: int) -> set[int]:
    """The worker processes of supervisor `pid` (from /proc)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                spawned = b"spawn_main" in f.read()
        except OSError:
            continue
        if ppid == pid and spawned:
            found.add(int(entry))
    return found


def _listeners(port: int) -> set[int]:
    """Pids of the processes with a socket listening on `port` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes}:
                    pids.add(int(pid))
        except OSError:
            continue
    return pids


def _wait(check, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    env = env_for(tmp_path / "data", port)
    cli(env, "init")
    proc = subprocess.Popen([*TESSERA, "serve", "--workers", "2", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait(lambda: _healthy(f"http://127.0.0.1:{port}") and len(_listeners(port)) == 2)
        yield proc, port
    finally:
        workers = _children(proc.pid)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=40)
        for pid in workers:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)


def test_each_worker_listens_on_its_own_socket(two_workers: tuple[subprocess.Popen, int]
                                               ) -> None:
    proc, port = two_workers
    workers = _children(proc.pid)
    assert len(workers) == 2
    # The supervisor holds no listening socket (it would take connections nobody accepts).
    assert _listeners(port) == workers


def test_connections_reach_both_workers(two_workers: tuple[subprocess.Popen, int]) -> None:
    proc, port = two_workers
    conns = []
    try:
        for _ in range(32):
            conn = socket.create_connection(("127.0.0.1", port))
            conns.append(conn)
        # Each accepted connection is an established socket in one worker's fd table.
        time.sleep(0.5)
        holders = {}
        for pid in _children(proc.pid):
            holders[pid] = sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                               if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
        # Not a balance check (the kernel hashes addresses): both take part.
        assert len(holders) == 2 and min(holders.values()) > 2
        assert _healthy(f"http://127.0.0.1:{port}")
    finally:
        for conn in conns:
            conn.close()


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(
        two_workers: tuple[subprocess.Popen, int]) -> None:
    proc, port = two_workers
    first = _children(proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replacement() -> set[int] | None:
        now = _children(proc.pid)
        return now if len(now) == 2 and victim not in now else None

    replaced = _wait(replacement)
    _wait(lambda: _listeners(port) == replaced)
    assert _healthy(f"http://127.0.0.1:{port}")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    assert not _children(proc.pid) and not _listeners(port)
    assert not any(os.path.exists(f"/proc/{pid}") and
                   open(f"/proc/{pid}/stat").read().split()[2] != "Z" for pid in replaced)


def test_workers_do_not_outlive_a_killed_supervisor(
        two_workers: tuple[subprocess.Popen, int]) -> None:
    proc, port = two_workers
    workers = _children(proc.pid)
    proc.kill()
    proc.wait(timeout=10)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and
                       open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
                       for pid in workers)

    _wait(gone, timeout=10)
    _wait(lambda: not _listeners(port))


def test_a_port_taken_by_another_program_stops_the_supervisor(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path / "data", port)
    cli(env, "init")
    with socket.socket() as squatter:  # no SO_REUSEPORT: the group cannot form
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc = subprocess.run([*TESSERA, "serve", "--workers", "2", "--log-level", "warning"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot listen on 127.0.0.1" in proc.stderr and "Address already in use" in proc.stderr

"""`tessera serve --workers N` (tessera.serving): one SO_REUSEPORT socket per worker process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.cli.test_e2e_server import TESSERA, cli, env_for, free_port

from tessera import serving

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


def _sockets(port: int, state: str) -> Counter[int]:
    """Per pid, its TCP sockets on local port `port` in `state` (/proc/net/tcp's hex code:
    0A listening, 01 established)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    held: Counter[int] = Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    held[int(pid)] += 1
        except OSError:
            continue
    return held


def _listeners(port: int) -> set[int]:
    return set(_sockets(port, "0A"))


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
        # Each accepted connection is an established socket on the port in one worker.
        def accepted() -> Counter[int] | None:
            held = _sockets(port, "01")
            return held if sum(held.values()) == 32 else None

        held = _wait(accepted)
        # Not a balance check (the kernel hashes addresses; one worker idle among 32
        # connections has odds of 2**-31): both take part, nobody else holds any.
        assert set(held) == _children(proc.pid)
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

"""Helpers shared by the benchmarks: percentiles, process CPU from /proc, free ports, scratch
PostgreSQL databases."""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the given live processes."""
    return sum(cpu_split(pids))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


def per_call(fn: Callable[[], object], n: int) -> float:
    """Median over 5 rounds of the mean seconds per call of fn."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n)
    return statistics.median(rounds)


def stat_ticks(path: str) -> tuple[int, int]:
    """(user, system) clock ticks from a /proc `stat` file; (0, 0) if it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the given live processes."""
    user = system = 0
    for pid in pids:
        u, s = stat_ticks(f"/proc/{pid}/stat")
        user += u
        system += s
    return user / CLK_TCK, system / CLK_TCK


def http_post_requests(host: str, port: int, path: str, bodies: list[bytes],
                       content_type: str) -> list[bytes]:
    """Ready-to-send HTTP/1.1 keep-alive POST requests, one per body."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            "Accept: application/json\r\n")
    return [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


async def drive_raw(host: str, port: int, requests: list[bytes], concurrency: int
                    ) -> list[float]:
    """Send `requests` over `concurrency` keep-alive connections, one request in flight per
    connection; return each latency. A load generator that costs ~30 us per request, where an
    HTTP client library costs ~1 ms: on a 2-core machine the library, not the server, would set
    the pace, and the server would be measured half idle (every request then pays its own
    wake-ups instead of sharing them, which is not how a loaded server runs)."""
    import asyncio

    latencies: list[float] = []
    queue = list(reversed(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                request = queue.pop()
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = -1
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length < 0:
                    raise SystemExit("response without Content-Length (this driver reads only "
                                     "those)")
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise SystemExit(f"request failed: {status} {body[:300]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL server of `server_url` (any
    database on it), dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(server_url.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

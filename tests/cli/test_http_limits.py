"""`tessera serve` bounds what a client can make it hold (tessera.api.http_limits, README
"HTTP limits"): head size and header count (431), head and body deadlines (408), idle
keep-alive, connections per worker (503) - against a real server on loopback."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.cli.test_e2e_server import TESSERA, cli, env_for, free_port, wait_until_serving

from tessera import serving

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 20
TIMEOUT = 1.0  # head, body and keep-alive timeouts of the server under test (s)
MAX_CONNECTIONS = 6
MB = 1024 * 1024


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[str], env: dict[str, str]) -> None:
        self.port = port
        self.proc = proc
        self.env = env
        self.url = f"http://127.0.0.1:{port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _start(tmp: Path, workers: int) -> Iterator[Server]:
    port = free_port()
    env = env_for(tmp / "data", port)
    env.update({"TESSERA_HTTP__MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
                "TESSERA_HTTP__MAX_HEADERS": str(MAX_HEADERS),
                "TESSERA_HTTP__HEADER_TIMEOUT": str(TIMEOUT),
                "TESSERA_HTTP__BODY_TIMEOUT": str(TIMEOUT),
                "TESSERA_HTTP__KEEP_ALIVE_TIMEOUT": str(TIMEOUT),
                "TESSERA_HTTP__MAX_CONNECTIONS": str(MAX_CONNECTIONS)})
    cli(env, "init")
    proc = subprocess.Popen([*TESSERA, "serve", "--workers", str(workers),
                             "--log-level", "error"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server(port, proc, env)
    try:
        wait_until_serving(server.url, proc,
                           lambda: proc.stdout.read())  # type: ignore[union-attr]
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _start(tmp_path_factory.mktemp("single"), 1)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def server(request: pytest.FixtureRequest, single: Server,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if request.param == 1:
        yield single
        return
    if not serving.available():
        pytest.skip("--workers N with SO_REUSEPORT is Linux's")
    yield from _start(tmp_path_factory.mktemp("workers"), request.param)


def _read_response(sock: socket.socket, limit: float = 10.0) -> tuple[int | None, bool]:
    """(status of the first response or None, whether the server then closed) within `limit`
    seconds."""
    sock.settimeout(limit)
    data = b""
    closed = False
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, closed


def _closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes `sock` (reading and dropping what it sends), or None."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _get(path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_rejects_a_request_head_over_the_size_limit_with_431_and_closes(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(_get("/healthz", {"X-Big": "a" * (2 * MAX_HEADER_BYTES)}))
        assert _read_response(sock) == (431, True)


def test_serves_a_head_under_the_limit_and_a_body_past_it_in_one_read(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(_get("/healthz", {"X-Big": "a" * (MAX_HEADER_BYTES - 200)}))
        assert _read_response(sock, 2.0)[0] == 200
    # Head and a body larger than the head limit arrive together: only the head counts.
    body = b"grant_type=client_credentials&x=" + b"a" * (3 * MAX_HEADER_BYTES)
    with server.connect() as sock:
        sock.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert _read_response(sock, 2.0)[0] == 401  # no client authentication: not 431


def test_rejects_a_request_with_too_many_header_fields_with_431(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(_get("/healthz", {f"X-H{i}": "v" for i in range(MAX_HEADERS + 5)}))
        assert _read_response(sock) == (431, True)
    with server.connect() as sock:
        sock.sendall(_get("/healthz", {f"X-H{i}": "v" for i in range(MAX_HEADERS - 2)}))
        assert _read_response(sock, 2.0)[0] == 200


def test_disconnects_a_slow_header_client_after_the_head_timeout(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        status = None
        for i in range(40):  # one header field every 0.25 s: at most 10 s
            try:
                sock.sendall(f"X-Slow-{i}: a\r\n".encode())
            except OSError:
                break
            sock.settimeout(0.25)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            status = int(data.split(b" ", 2)[1]) if data else status
            break
        elapsed = time.monotonic() - start
        assert status == 408
        assert elapsed < 4 * TIMEOUT
        assert _closed_within(sock, 5.0) is not None


def test_closes_a_connection_that_sends_nothing(server: Server) -> None:
    with server.connect() as sock:
        assert _closed_within(sock, 5.0) is not None


def test_disconnects_a_slow_body_after_the_body_timeout(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\ngrant_type=")
        assert _read_response(sock) == (408, True)


def test_closes_an_idle_keep_alive_connection(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(_get("/healthz"))
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        idle = _closed_within(sock, 5.0)
        assert idle is not None and idle < 4 * TIMEOUT


def test_answers_503_past_max_connections(single: Server) -> None:
    held = [single.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with single.connect() as sock:
            sock.sendall(_get("/healthz"))
            assert _read_response(sock)[0] == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{single.url}/healthz", timeout=5).status_code == 200


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory field, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _send_huge_header(port: int, size: int, results: list[str]) -> None:
    """One request whose single header is `size` bytes, sent until the server stops reading."""
    chunk = b"a" * MB
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            for _ in range(size // MB):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
            results.append("sent")
    except OSError:
        results.append("refused")


def test_memory_stays_bounded_under_huge_header_requests(single: Server) -> None:
    pid = single.proc.pid
    before = _status(pid, "VmRSS")
    attackers, size = 6, 64 * MB
    results: list[str] = []
    threads = [threading.Thread(target=_send_huge_header, args=(single.port, size, results))
               for _ in range(attackers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    peak = _status(pid, "VmHWM")  # the high-water mark catches any transient buffering
    # 6 x 64 MB were sent at it; a bounded server holds at most a head limit per connection
    # (without the limit: RSS 128 -> 566 MB, peak 628 MB).
    assert peak - before < 50 * MB, f"RSS {before // MB} MB before, peak {peak // MB} MB"
    assert results == ["refused"] * attackers  # each stopped being read long before 64 MB
    token = cli(single.env, "token").stdout.strip()
    assert token.count(".") == 2

"""`tessera serve --workers N`: N uvicorn processes, each with its own listening socket.

uvicorn's own multi-process mode shares one listening socket between its workers, and whichever
worker wakes first accepts a burst of new connections: 16 keep-alive clients arriving together
were seen split 13/3 and 2/14. A worker left with two or three connections commits its audit
events in batches of one or two, and each token then pays a whole transaction (on SQLite ~2x
the CPU of a token in a batch of eight). Here every worker binds its own socket with
SO_REUSEPORT and the kernel spreads connections across them by address hash, as nginx's
`reuseport` does. A worker that dies is replaced; its socket closes with it, so no connection
waits on a socket nobody accepts from.

Written by hand because uvicorn has no such mode: its supervisor hands every worker the same
sockets. Linux only (where SO_REUSEPORT balances TCP connections); elsewhere `serve` uses
uvicorn's own.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.config import HTTPSettings

log = logging.getLogger("tessera.serve")
APP = "tessera.api.app:create_app"
STARTUP_FAILURE = 3  # uvicorn's exit code for a server that could not start
BACKLOG = 2048


def uvicorn_options(http: HTTPSettings, *, tls: bool = False) -> dict[str, Any]:
    """The uvicorn options that bound what a client can make a worker hold (README, "HTTP
    limits"): the same in one process and in each worker of `--workers N`.

    Head size, header count and the head and body deadlines are enforced by the protocol class
    (`tessera.api.http_limits`); the idle keep-alive timeout and the connection limit are
    uvicorn's own. At `max_connections` open connections or requests in progress, uvicorn
    answers each further request 503 with `connection: close` instead of queueing it: load
    shedding a client retries later, rather than a worker whose memory and latency grow with
    its queue. WebSockets are off: Tessera serves none, and an upgrade would leave these
    bounds behind.
    """
    from tessera.api.http_limits import HTTPLimits, LimitedHttpToolsProtocol
    from tessera.api.tls import TLSProtocol

    protocol = TLSProtocol if tls else LimitedHttpToolsProtocol
    return {"http": partial(protocol, limits=HTTPLimits.from_settings(http)),
            "ws": "none",
            "timeout_keep_alive": http.keep_alive_timeout,
            "limit_concurrency": http.max_connections or None}


def available() -> bool:
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket in the port's SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with(parent: int) -> None:
    """SIGTERM this process when `parent` dies, even killed outright: a worker outliving its
    supervisor would keep serving, and keep its port, with nobody to stop it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(0)


def _worker(options: dict[str, Any], parent: int) -> None:
    """One worker process: its own socket, one uvicorn server (its signal handlers included)."""
    import uvicorn

    _die_with(parent)

    config = uvicorn.Config(APP, factory=True, **options)
    try:
        sock = bind(config.host, config.port, config.backlog)
    except OSError as exc:
        print(f"tessera: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Starts `workers` processes, replaces one that dies, stops them all on SIGINT/SIGTERM."""

    def __init__(self, options: dict[str, Any], workers: int, *,
                 grace: float = 30.0, poll: float = 0.5) -> None:
        self._options = {**options, "backlog": options.get("backlog", BACKLOG)}
        self._workers = workers
        self._grace = grace
        self._poll = poll
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._stopping = False

    def _start(self) -> Any:
        proc = self._ctx.Process(target=_worker, args=(self._options, os.getpid()),
                                 daemon=False)
        proc.start()
        return proc

    def _stop(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    def run(self) -> int:
        """Serve until a signal asks to stop; the exit status for the command."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._procs = [self._start() for _ in range(self._workers)]
            while not self._stopping:
                time.sleep(self._poll)
                for i, proc in enumerate(self._procs):
                    if proc.is_alive() or self._stopping:
                        continue
                    if proc.exitcode == STARTUP_FAILURE:
                        log.error("a worker could not start (exit %s): stopping", proc.exitcode)
                        self._stopping = True
                        return 1
                    log.warning("worker %s exited (%s): starting another", proc.pid,
                                proc.exitcode)
                    self._procs[i] = self._start()
            return 0
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _shutdown(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes the requests it is serving
        deadline = time.monotonic() + self._grace
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop in %.0f s: killed", proc.pid, self._grace)
                proc.kill()
                proc.join()


__all__ = ["Supervisor", "available", "bind", "uvicorn_options"]

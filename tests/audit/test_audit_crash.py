"""Durability: SIGKILL the server under load; every acknowledged token's event is on disk."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tessera.cli.client import client_assertion
from tessera.config import Settings
from tessera.container import build

pytestmark = pytest.mark.slow


def free_port() -> int:
    for port in range(18600, 18700):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18600-18699")


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def test_sigkill_under_load_loses_no_acknowledged_event(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "TESSERA_DATA_DIR": str(data), "TESSERA_DATABASE_URL": db_url,
           "TESSERA_PORT": str(port), "TESSERA_HOST": "127.0.0.1"}
    cli = [sys.executable, "-m", "tessera.cli.main"]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True, timeout=120)
    server = subprocess.Popen([*cli, "serve", "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start")
        client_id = json.loads((data / "admin.json").read_text())["client_id"]
        jwk = json.loads((data / "admin-key.jwk").read_text())
        endpoint = f"{base}/oauth2/token"
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    form = {"grant_type": "client_credentials",
                            "client_assertion_type":
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                            "client_assertion": client_assertion(client_id, jwk, endpoint)}
                    try:
                        resp = http.post(endpoint, data=form)
                    except httpx.TimeoutException:
                        continue  # a loaded machine: slow is not gone
                    except httpx.HTTPError:
                        return  # the server is gone
                    if resp.status_code == 200:
                        with lock:
                            acknowledged.append(jti_of(resp.json()["access_token"]))

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 180
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        server.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert len(acknowledged) >= 150

    services = build(Settings(data_dir=data, database_url=db_url))
    try:
        with services.sessions() as s:
            report = services.audit.verify(s, jwks=services.keys.jwks())
            issued = {e.data.get("jti") for e in services.audit.events(
                s, type="oauth.token.issued", limit=100_000)}
    finally:
        services.close()
    assert report.ok, report.problems
    missing = [j for j in acknowledged if j not in issued]
    assert missing == []

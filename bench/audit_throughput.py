"""Audit write throughput and the audit's cost on token issuance, SQLite and PostgreSQL.

Per backend, with the same number of concurrent writers:
  plain      unchained insert, one transaction per event (the baseline)
  chained    hash-chained append in the caller's transaction, one commit per event
  group      hash-chained append through the group committer (callers wait until durable)
Then token issuance (POST /oauth2/token, private_key_jwt) latency and throughput with the audit
in group-commit mode, in-transaction mode, and switched off.

    .venv/bin/python bench/audit_throughput.py                 # SQLite and PostgreSQL
    .venv/bin/python bench/audit_throughput.py --quick --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import scratch_database  # bench/ is the script's directory
from cryptography.fernet import Fernet
from sqlalchemy import Column, Integer, MetaData, String, Table, Text

from tessera.clock import SystemClock
from tessera.config import Settings
from tessera.container import Services, build
from tessera.db import make_engine, migrate
from tessera.keys.software import SoftwareKeyProvider

PG_URL = os.environ.get("TESSERA_BENCH_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")
warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
PLAIN = Table("bench_plain_events", MetaData(), Column("id", Integer, primary_key=True,
                                                        autoincrement=True),
              Column("type", String(64)), Column("data", Text))


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    with scratch_database(PG_URL, "tessera_bench") as scratch:
        yield scratch


def make(url: str, tmp: Path, *, group: bool) -> Services:
    key = Fernet.generate_key()
    settings = Settings(data_dir=tmp, database_url=url, issuer="http://bench.test",
                        master_key=key.decode(), node_id="bench")
    settings.audit.group_commit = group
    settings.monitor.enabled = False
    return build(settings, clock=SystemClock(), provider=SoftwareKeyProvider(key),
                 trust_domain="bench.test")


def run_writers(n_threads: int, seconds: float, write: Callable[[], None]) -> float:
    """Events per second with n_threads callers each writing one event at a time."""
    stop = time.monotonic() + seconds
    counts = [0] * n_threads

    errors = [0]

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            try:
                write()
            except Exception:  # noqa: BLE001 - e.g. SQLite busy past its timeout; counted
                errors[0] += 1
                continue
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n_threads)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors[0]:
        print(f"  ({errors[0]} writes failed and were not counted)", file=sys.stderr)
    return sum(counts) / (time.monotonic() - start)


def bench_writes(url: str, tmp: Path, threads: int, seconds: float) -> dict[str, float]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    PLAIN.create(engine)
    results: dict[str, float] = {}

    def plain() -> None:
        with engine.begin() as conn:
            conn.execute(PLAIN.insert().values(type="bench.event.done", data='{"i": 1}'))

    results["plain"] = run_writers(threads, seconds, plain)
    for mode in ("chained", "group"):
        services = make(url, tmp / mode, group=mode == "group")
        with services.sessions() as s:
            services.keys.create(s, "ES256")
            s.commit()

        def chained(services: Services = services) -> None:
            with services.sessions() as s:
                # authz.decision.* takes the group path when group commit is on.
                services.audit.record(s, "authz.decision.made", actor="idn_bench",
                                      subject="idn_bench", action="read", resource="ds:1")
                s.commit()

        results[mode] = run_writers(threads, seconds, chained)
        if mode == "group" and services.audit.committer is not None:
            c = services.audit.committer
            results["group_batch"] = c.events / max(c.batches, 1)
        with services.sessions() as s:
            report = services.audit.verify(s, jwks=services.keys.jwks())
            if not report.ok:
                raise SystemExit(f"chain broken after the {mode} run: {report.problems[:3]}")
        services.close()
    engine.dispose()
    return results


def bench_tokens(url: str, tmp: Path, requests: int, threads: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from joserfc import jwt
    from joserfc.jwk import ECKey

    from tessera.api.app import create_app
    from tessera.identity.schemas import CredentialCreate, IdentityCreate

    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    out: dict[str, Any] = {}
    for mode in ("group", "in_transaction", "off"):
        services = make(url, tmp / f"tok-{mode}", group=mode == "group")
        if mode == "off":
            services.audit.record = lambda *a, **k: None  # type: ignore[method-assign]
        key = ECKey.generate_key("P-256", private=True)
        with services.sessions() as s:
            services.keys.create(s, "ES256")
            owner = services.identities.register(s, IdentityCreate(
                name=f"owner-{mode}", kind="human"), actor="bench")
            agent = services.identities.register(s, IdentityCreate(
                name=f"agent-{mode}", kind="agent", owner=owner.id, purpose="bench",
                expires_at=services.clock.now() + timedelta(days=30)), actor="bench")
            cred = services.identities.add_credential(
                s, agent.id, CredentialCreate(jwk=key.as_dict(private=False)), actor="bench")
            s.commit()
        app = create_app(services=services, run_jobs=False)

        def form() -> dict[str, str]:
            now = int(time.time())
            assertion = jwt.encode({"alg": "ES256", "kid": cred.kid},
                                   {"iss": agent.id, "sub": agent.id,
                                    "aud": "http://bench.test/oauth2/token", "iat": now,
                                    "exp": now + 60, "jti": secrets.token_hex(8)}, key)
            return {"grant_type": "client_credentials", "client_assertion": assertion,
                    "client_assertion_type":
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}

        with TestClient(app, base_url="http://bench.test") as client:
            lat = []
            for _ in range(requests):
                f = form()
                t = time.perf_counter()
                resp = client.post("/oauth2/token", data=f)
                lat.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    raise SystemExit(f"token request failed: {resp.text}")
            lat.sort()
            done = [0]
            lock = threading.Lock()

            def worker() -> None:
                for _ in range(requests // threads):
                    if client.post("/oauth2/token", data=form()).status_code == 200:
                        with lock:
                            done[0] += 1

            ts = [threading.Thread(target=worker) for _ in range(threads)]
            start = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            rate = done[0] / (time.perf_counter() - start)
        out[mode] = {"p50_ms": statistics.median(lat) * 1000,
                     "p95_ms": lat[int(len(lat) * 0.95) - 1] * 1000, "concurrent_rps": rate}
        services.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--threads", type=int, default=16, help="concurrent writers")
    ap.add_argument("--seconds", type=float, default=2.0, help="per write measurement")
    ap.add_argument("--requests", type=int, default=100, help="token requests per mode")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.requests = 1.0, 60
    for backend in args.backends.split(","):
        with database(backend) as url, tempfile.TemporaryDirectory() as tmp:
            try:
                w = bench_writes(url, Path(tmp), args.threads, args.seconds)
            except Exception as exc:  # noqa: BLE001
                print(f"{backend}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
                continue
            print(f"[{backend}] audit writes, {args.threads} concurrent writers:")
            print(f"  plain unchained insert  {w['plain']:9.0f} events/s  (baseline)")
            print(f"  chained, per-event tx   {w['chained']:9.0f} events/s  "
                  f"x{w['chained'] / w['plain']:.2f}")
            print(f"  chained, group commit   {w['group']:9.0f} events/s  "
                  f"x{w['group'] / w['plain']:.2f}  (mean batch {w.get('group_batch', 0):.1f})")
        with database(backend) as url, tempfile.TemporaryDirectory() as tmp:
            tok = bench_tokens(url, Path(tmp), args.requests, 8)
            print(f"[{backend}] token issuance (in-process ASGI), {args.requests} sequential, "
                  "then 8 threads:")
            off = tok["off"]
            for mode in ("off", "in_transaction", "group"):
                r = tok[mode]
                print(f"  audit {mode:<15} p50 {r['p50_ms']:6.2f} ms  p95 {r['p95_ms']:6.2f} ms"
                      f"  x{r['p50_ms'] / off['p50_ms']:.2f} p50   "
                      f"{r['concurrent_rps']:7.0f} req/s")


if __name__ == "__main__":
    main()

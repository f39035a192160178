"""Paired A/B of two Tessera servers: token issuance alternated between them, round by round.

This VM's speed drifts by 15-25 % over minutes, so two configurations measured one after the
other can differ by more than the change between them. Here both servers run side by side (each
on its own data directory, or its own scratch PostgreSQL database) and take turns: in every
round each serves `--requests` tokens while the other idles, the order swapping every round.
Each round reports the server's CPU per token (every process of it, from /proc), split into
the event loops (each worker's main thread), the audit committers, the jobs threads (the
monitor's passes, checkpoints; both named by `tessera.threadname`, so a checkout older than
that shows them as "other"), and on PostgreSQL the CPU the database's processes spent meanwhile; the summary gives the
medians and in how many paired rounds B was the cheaper.

A and B differ by environment: `PYTHONPATH=DIR` runs another checkout's `src` (same database
schema), `TESSERA_DATABASE=sqlite` runs that server on SQLite even with `--database-url`.

    .venv/bin/python bench/ab_servers.py --rounds 10 'PYTHONPATH=/tmp/old/src' ''
    .venv/bin/python bench/ab_servers.py --database-url postgresql://postgres@127.0.0.1:5432/test \
        'TESSERA_DATABASE=sqlite' ''   # the same code on SQLite (A) and PostgreSQL (B)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLK_TCK,
    cpu_split,
    free_port,
    process_tree,
    scratch_database,
    stat_ticks,
)
from token_issuance import assertions, drive, wait_healthy

THREADS = ("event loops", "committer", "jobs", "other")
_BY_COMM = {"tessera-commit": "committer", "tessera-jobs": "jobs"}  # tessera.threadname


def thread_split(pids: list[int]) -> dict[str, int]:
    """Clock ticks of the processes' main threads (the event loops), of the audit committers,
    of the jobs threads (the monitor's passes, checkpoints) and of any other thread."""
    ticks = dict.fromkeys(THREADS, 0)
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            kind = "event loops" if tid == str(pid) else _BY_COMM.get(comm, "other")
            ticks[kind] += sum(stat_ticks(f"/proc/{pid}/task/{tid}/stat"))
    return ticks


def prepare_as(env: dict[str, str], data_dir: Path, url: str | None, agents: int
               ) -> list[tuple[str, Any]]:
    """`token_issuance.prepare` run with the server's environment (its PYTHONPATH): the
    database gets the schema of the code that serves it."""
    from joserfc.jwk import ECKey

    script = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "from token_issuance import prepare; "
              "out = prepare(Path(sys.argv[2]), sys.argv[3] or None, int(sys.argv[4])); "
              "print(json.dumps([[i, k.as_dict(private=True)] for i, k in out]))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).resolve().parent),
                           str(data_dir), url or "", str(agents)], env=env, check=True,
                          capture_output=True, text=True)
    return [(i, ECKey.import_key(jwk)) for i, jwk in json.loads(done.stdout.splitlines()[-1])]


def postgres_ticks() -> int:
    """Clock ticks of every PostgreSQL process on this machine."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += sum(stat_ticks(f"/proc/{pid}/stat"))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("env_a", help="KEY=VALUE pairs, space-separated, for server A")
    parser.add_argument("env_b", help="the same for server B")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000, help="tokens per server a round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL server URL: each server gets a scratch database on it")
    args = parser.parse_args()
    concurrency = 8 * args.workers

    def database(prefix: str) -> Any:
        return scratch_database(args.database_url, prefix) if args.database_url \
            else nullcontext(None)

    with tempfile.TemporaryDirectory() as tmp, database("tessera_ab_a") as url_a, \
            database("tessera_ab_b") as url_b:
        servers = []
        for name, spec, url in (("A", args.env_a, url_a), ("B", args.env_b, url_b)):
            extra = dict(kv.split("=", 1) for kv in spec.split())
            if extra.pop("TESSERA_DATABASE", "") == "sqlite":
                url = None
            data_dir = Path(tmp) / name
            port = free_port()
            env = {**os.environ, **extra, "TESSERA_DATA_DIR": str(data_dir),
                   "TESSERA_PORT": str(port)}
            agents = prepare_as(env, data_dir, url, args.agents)  # the server's own schema
            if url:
                env["TESSERA_DATABASE_URL"] = url
            proc = subprocess.Popen([sys.executable, "-m", "tessera.cli.main", "serve",
                                     "--workers", str(args.workers), "--log-level", "warning"],
                                    env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            servers.append((name, spec, proc, f"http://127.0.0.1:{port}", agents, bool(url)))
        try:
            for _, _, _, base, agents, _ in servers:
                wait_healthy(base)
                drive(base, assertions(agents, f"{base}/oauth2/token", 400), concurrency)
            results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for r in range(args.rounds):
                for name, _, proc, base, agents, on_pg in (servers if r % 2 == 0
                                                           else servers[::-1]):
                    forms = assertions(agents, f"{base}/oauth2/token", args.requests)
                    pids = process_tree(proc.pid)
                    split0, pg0 = thread_split(pids), postgres_ticks()
                    cpu0, t0 = sum(cpu_split(pids)), time.perf_counter()
                    drive(base, forms, concurrency)
                    elapsed = time.perf_counter() - t0
                    cpu = (sum(cpu_split(pids)) - cpu0) / args.requests
                    split1, pg1 = thread_split(pids), postgres_ticks()
                    per = 1 / CLK_TCK / args.requests
                    results[name].append({
                        "cpu": cpu, **{k: (split1[k] - split0[k]) * per for k in THREADS},
                        "postgres": (pg1 - pg0) * per if on_pg else 0.0,
                        "tokens/s": args.requests / elapsed})
                print(f"round {r + 1}: A {results['A'][-1]['cpu'] * 1e6:.0f} us, "
                      f"B {results['B'][-1]['cpu'] * 1e6:.0f} us", flush=True)
        finally:
            for _, _, proc, *_ in servers:
                proc.terminate()
                proc.wait(timeout=15)

    print(f"paired A/B, {args.workers} workers, concurrency {concurrency}, {args.rounds} rounds "
          f"of {args.requests} tokens each (CPU per token, medians)")
    for name, spec, *_ in servers:
        rows = results[name]
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        parts = ", ".join(f"{k} {med[k] * 1e6:.0f}" for k in THREADS)
        print(f"  {name} ({spec or 'this checkout'}): {med['cpu'] * 1e6:.0f} us ({parts}"
              + (f"; PostgreSQL processes {med['postgres'] * 1e6:.0f}" if med["postgres"]
                 else "")
              + f"), {med['tokens/s']:.0f} tokens/s; rounds "
              + ", ".join(f"{row['cpu'] * 1e6:.0f}" for row in rows))
    wins = sum(b["cpu"] < a["cpu"] for a, b in zip(results["A"], results["B"]))
    print(f"  B cheaper than A in {wins} of {args.rounds} paired rounds")


if __name__ == "__main__":
    main()

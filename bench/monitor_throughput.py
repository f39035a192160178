"""Monitor throughput: CPU per audit event of `MonitorService.process`, beside reading the rows.

Builds a fresh data directory (SQLite, or a scratch PostgreSQL database with --database-url),
registers 20 agents and appends N audit events through `AuditService` (a real hash chain):
`oauth.token.issued` shaped as the token endpoint writes them (client_credentials,
private_key_jwt) and, one in ten, `authz.decision.made` with 2 % denials. Event time runs at
600 events/s (a fake clock), about the load the token benchmark puts on one server.

Then, per round, the monitor's tables are reset and the whole stream is consumed the way the
`monitor` job does it (one session and one commit per pass), in passes of 600 events (one
second of that load) and of 2000 (the job's batch). Two starting states:
  steady    every agent has a trusted baseline that matches its traffic (a server that has
            run for days: every detector runs, nothing fires)
  learning  no baselines yet (a fresh server, as in bench/token_issuance.py: most detectors
            return early)
  2 workers steady, with two monitors each running every pass, as the workers of
            `tessera serve --workers 2` do: the one holding the cursor's lease consumes, the
            other reads the cursor row and leaves the stream to it (before the lease,
            migration 0010, they took turns and each reloaded its memory from the tables)
Beside them, in the same run and the same passes, the cost of only reading the rows with
`AuditService.iter_rows` (how the monitor read them at first) and, where it exists, with
`AuditService.read_stream` (the monitor's own reader since), so the monitor's share can be
read off. Figures are CPU time of
this process (time.process_time), medians over the rounds. The last line is a digest of what
the monitor stored (baselines, alerts, risk): it must not change when only speed does.
Each timed phase starts after gc.collect(), so that one phase's garbage is not collected in
the next one's time (a full collection of this process's heap costs ~75 ms here).

    .venv/bin/python bench/monitor_throughput.py [--events 6000] [--rounds 5]
    .venv/bin/python bench/monitor_throughput.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from _common import scratch_database  # bench/ is the script's directory
from sqlalchemy import delete, select, update

from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.audit.groupcommit import WriteUnit
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.monitor.service import MonitorService

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RATE = 600  # events per second of simulated time
AUDIENCE = "https://api.bench.test"
DOCS = 40


@contextmanager
def database(url: str | None, tmp: Path) -> Iterator[str | None]:
    """None (SQLite in the data directory) or a scratch database on the given server."""
    if url is None:
        yield None
        return
    with scratch_database(url, "tessera_bench_monitor") as scratch:
        yield scratch


def prepare(data_dir: Path, database_url: str | None, agents: int, clock: FakeClock
            ) -> tuple[Services, list[str]]:
    from tessera.bootstrap import init
    from tessera.config import Settings
    from tessera.container import build
    from tessera.identity.schemas import IdentityCreate

    settings = Settings(data_dir=data_dir, database_url=database_url)
    report = init(settings)
    svc = build(settings, clock=clock)
    ids = []
    with svc.sessions() as s:
        for i in range(agents):
            row = svc.identities.register(s, IdentityCreate(
                name=f"bench-agent-{i}", kind="agent", owner=report.admin_id,
                purpose="benchmark", expires_at=START + timedelta(days=30),
                allowed_scopes=["read"]), actor="bench")
            ids.append(row.id)
        s.commit()
    return svc, ids


def source_of(i: int, rng: random.Random) -> str:
    return f"10.{20 + i // 200}.{i % 200}.{rng.choice((11, 12, 47))}"


def kid_of(i: int) -> str:
    """A key thumbprint's shape (43 characters), fixed per agent so digests are comparable."""
    return hashlib.sha256(f"agent-key-{i}".encode()).hexdigest()[:43]


def token_event(svc: Services, ids: list[str], i: int, source: str, clock: FakeClock
                ) -> dict[str, Any]:
    """`oauth.token.issued` as TokenService.issue writes it for client_credentials."""
    who = ids[i]
    return svc.audit.event(
        ev.TOKEN_ISSUED, actor=who, subject=who, action="client_credentials",
        resource=AUDIENCE, ctx=RequestContext(request_id=secrets.token_hex(8), source=source),
        data={"jti": secrets.token_urlsafe(16), "scope": "read",
              "exp": int(clock.now().timestamp()) + 3600, "method": "private_key_jwt",
              "kid": kid_of(i)})


def decision_event(svc: Services, ids: list[str], i: int, source: str, doc: str,
                   allowed: bool) -> dict[str, Any]:
    """`authz.decision.made` as the PDP writes one decision."""
    who = ids[i]
    return svc.audit.event(
        ev.AUTHZ_DECISION, outcome="success" if allowed else "failure", actor=who,
        subject=who, action="read", resource=doc,
        ctx=RequestContext(request_id=secrets.token_hex(8), source=source),
        reasons=[] if allowed else ["no policy permits"],
        data={"policy_set": "default", "request": {
            "subject": {"type": "Agent", "id": who}, "action": {"name": "read"},
            "resource": {"type": "Document", "id": doc.split("::")[1]}},
            "decision": allowed, "policies": ["p-read"] if allowed else [],
            "obligations": [], "errors": [], "policy_version": 7, "latency_us": 41.5})


def write_events(svc: Services, ids: list[str], n: int, clock: FakeClock,
                 rng: random.Random, attacks: bool = False) -> tuple[int, int]:
    """Append n events through the audit service; (first seq, last seq). With `attacks`,
    a few agents misbehave along the way (for the detection digest, not for timing)."""
    with svc.sessions() as s:
        first = svc.audit.head(s)[0] + 1
    chunk: list[dict[str, Any]] = []
    for k in range(n):
        i = rng.randrange(len(ids))
        source = source_of(i, rng)
        if attacks and k == n // 4:  # probing: a run of denials
            chunk += [decision_event(svc, ids, 0, source_of(0, rng), f"Document::doc-{d}",
                                     False) for d in range(8)]
        elif attacks and k == n // 2:  # a copied key used from elsewhere at the same time
            chunk.append(token_event(svc, ids, 1, "203.0.113.7", clock))
        elif attacks and k == 3 * n // 4:  # something it never read before
            chunk.append(decision_event(svc, ids, 2, source_of(2, rng), "Document::payroll",
                                        True))
        elif k % 10 == 9:
            chunk.append(decision_event(svc, ids, i, source, f"Document::doc-"
                                        f"{rng.randrange(DOCS)}", rng.random() >= 0.02))
        else:
            chunk.append(token_event(svc, ids, i, source, clock))
        clock.advance(1 / RATE)
        if len(chunk) >= 500:
            svc.audit.commit_unit(WriteUnit(events=chunk))
            chunk = []
    if chunk:
        svc.audit.commit_unit(WriteUnit(events=chunk))
    with svc.sessions() as s:
        return first, svc.audit.head(s)[0]


def steady_baselines(ids: list[str], rng: random.Random) -> dict[str, dict[str, Any]]:
    """Baselines of agents that have issued ~30 tokens/s around the clock for four days."""
    from tessera.monitor.baseline import Baseline, network_of
    from tessera.monitor.engine import ORG

    t0 = START.timestamp()
    out = {}
    org = Baseline(ORG)
    for i, who in enumerate(ids):
        net = network_of(source_of(i, rng))
        assert net is not None
        b = Baseline(who, first_seen=t0 - 4 * 86400, last_seen=t0 - 1, events=10_000_000,
                     hours=[400_000] * 24, resources={AUDIENCE: 9_000_000, **{
                         f"Document::doc-{d}": 20_000 for d in range(DOCS)}},
                     actions={"client_credentials": 9_000_000, "read": 1_000_000},
                     networks={net: 10_000_000}, minute=int(t0 // 60) - 1,
                     minute_count=1800, rate_mean=[1800.0] * 24, rate_dev=[120.0] * 24,
                     token_hour=int(t0 // 3600) - 1, token_count=100_000,
                     token_rate=100_000.0, denial_ratio=0.002,
                     last_by_credential={kid_of(i): [net, t0 - 1]})
        org.networks[net] = 10_000_000
        out[who] = b.to_json()
    out[ORG] = org.to_json()
    return out


def reset(svc: Services, first: int, seeded: dict[str, dict[str, Any]]) -> None:
    """Monitor tables as before the stream, the cursor just before its first event."""
    from tessera.monitor.models import (
        AlertRow,
        BaselineRow,
        ResponseRow,
        RiskRow,
        StreamCursorRow,
    )
    from tessera.monitor.service import CURSOR

    with svc.sessions() as s:
        for model in (AlertRow, RiskRow, ResponseRow, BaselineRow):
            s.execute(delete(model))
        for who, state in seeded.items():
            s.add(BaselineRow(identity_id=who, state=json.loads(json.dumps(state)),
                              updated_at=START))
        if s.scalars(select(StreamCursorRow).where(StreamCursorRow.name == CURSOR)).first():
            s.execute(update(StreamCursorRow).where(StreamCursorRow.name == CURSOR)
                      .values(seq=first - 1, owner=None, lease_until=None))
        else:
            s.add(StreamCursorRow(name=CURSOR, seq=first - 1))
        s.commit()


def consume(svc: Services, limit: int, monitors: list[Any] | None = None
            ) -> tuple[float, int]:
    """CPU seconds and events of consuming the stream in passes of `limit`, as the job does;
    with several `monitors` (workers of one server, or nodes), each runs every pass."""
    turns = monitors or [svc.monitor]
    cpu, total = 0.0, 0
    gc.collect()
    while True:
        consumed = 0
        for monitor in turns:
            t0 = time.process_time()
            with svc.sessions() as s:
                done = monitor.process(s, limit=limit)
                s.commit()
            cpu += time.process_time() - t0
            consumed += done
        total += consumed
        if consumed == 0:
            return cpu, total


def read_only(svc: Services, first: int, last: int, limit: int, light: bool = False) -> float:
    """CPU seconds of only reading the same rows in the same passes: `iter_rows` (what the
    monitor read before it had a reader of its own), or with `light` `read_stream`."""
    cpu, after = 0.0, first - 1
    gc.collect()
    while after < last:
        t0 = time.process_time()
        with svc.sessions() as s:
            if light:
                after = svc.audit.read_stream(s, after=after, limit=limit)[-1].seq
            else:
                after = list(islice(svc.audit.iter_rows(s, batch=limit, after=after),
                                    limit))[-1]["seq"]
            s.commit()
        cpu += time.process_time() - t0
    return cpu


def digest(svc: Services, ids: list[str]) -> tuple[str, int]:
    """What the monitor stored, with the random identity ids replaced by their index; and
    how many alerts it raised."""
    from tessera.monitor.models import AlertRow, BaselineRow, ResponseRow, RiskRow

    with svc.sessions() as s:
        doc = {
            "baselines": {b.identity_id: b.state for b in s.scalars(select(BaselineRow))},
            "alerts": [[a.identity_id, a.event_seq, a.detector, a.score, a.summary, a.data]
                       for a in s.scalars(select(AlertRow))],
            "responses": sorted([r.identity_id, r.kind, r.threshold, r.risk, r.data.get(
                "tokens_revoked")] for r in s.scalars(select(ResponseRow))),
            "risk": {r.identity_id: round(r.score, 6) for r in s.scalars(select(RiskRow))}}
    out = json.dumps(doc, default=str)
    for i, who in enumerate(ids):
        out = out.replace(who, f"agent-{i}")
    clean = json.loads(out)
    clean["alerts"].sort(key=json.dumps)
    out = json.dumps(clean, sort_keys=True)
    return hashlib.sha256(out.encode()).hexdigest()[:16], len(doc["alerts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", default="600,2000", help="pass sizes, comma-separated")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server: a scratch database is created on it and "
                             "dropped afterwards")
    args = parser.parse_args()
    sizes = [int(p) for p in args.passes.split(",")]
    rng = random.Random(7)

    with tempfile.TemporaryDirectory() as tmp, database(args.database_url, Path(tmp)) as url:
        clock = FakeClock(START)
        svc, ids = prepare(Path(tmp) / "data", url, args.agents, clock)
        try:
            first, last = write_events(svc, ids, args.events, clock, rng)
            steady = steady_baselines(ids, rng)
            seeded = {"steady": steady, "learning": {}, "2 workers": steady}
            assert svc.monitor is not None
            # Another worker's monitor: it leaves the stream to the lease's holder.
            other = MonitorService(clock, svc.audit, svc.identities, svc.sessions,
                                   config=svc.monitor.monitor.config,
                                   thresholds=svc.monitor.thresholds)
            other.event_hooks = svc.monitor.event_hooks
            db = "PostgreSQL" if url else "SQLite"
            print(f"monitor throughput: {last - first + 1} audit events ({args.agents} agents, "
                  f"90 % oauth.token.issued, 10 % authz.decision.made), {db}, "
                  f"median of {args.rounds} rounds, {os.cpu_count()} cores")
            light = hasattr(svc.audit, "read_stream")  # absent before the monitor's reader
            print(f"  {'pass':>6} {'baselines':>10} {'process':>10} {'iter_rows':>10} "
                  f"{'read_stream':>12}")
            quiet: dict[str, str] = {}
            for size in sizes:
                for mode, state in seeded.items():
                    proc, read, lread = [], [], []
                    for _ in range(args.rounds):
                        reset(svc, first, state)
                        cpu, n = consume(svc, size, [svc.monitor, other]
                                         if mode == "2 workers" else None)
                        if n != last - first + 1:  # alerts would have added events
                            raise SystemExit(f"the monitor consumed {n} events, not "
                                             f"{last - first + 1}")
                        proc.append(cpu / n)
                        read.append(read_only(svc, first, last, size) / n)
                        if light:
                            lread.append(read_only(svc, first, last, size, light=True) / n)
                        quiet[mode], _ = digest(svc, ids)
                    p, r = statistics.median(proc), statistics.median(read)
                    lr = f"{statistics.median(lread) * 1e6:9.1f} us" if light else "-"
                    print(f"  {size:>6} {mode:>10} {p * 1e6:7.1f} us {r * 1e6:7.1f} us "
                          f"{lr:>12}")
            print("  (CPU per event: process = MonitorService.process + commit, in passes of"
                  " that size;\n   iter_rows, read_stream = only reading the same rows in the "
                  "same passes)")
            # Detection check, not timed: the same stream plus one with a few attacks in it.
            write_events(svc, ids, args.events // 2, clock, rng, attacks=True)
            attacked: dict[str, tuple[str, int]] = {}
            for mode, state in seeded.items():
                if mode == "2 workers":
                    continue
                reset(svc, first, state)
                consume(svc, 600)
                attacked[mode] = digest(svc, ids)
            print("  digests of what the monitor stored (must not change with speed work):")
            for mode, q in quiet.items():
                d, alerts = attacked.get(mode, ("-", 0))
                print(f"    {mode:>10}  quiet stream {q}  with attacks {d} "
                      f"({alerts} alerts)")
        finally:
            svc.close()


if __name__ == "__main__":
    main()

"""Scenario generator and evaluation of tessera.monitor.

Simulates a population of agents with daily patterns (office-hours agents, nightly batch jobs,
round-the-clock services, dormant agents) on a FakeClock, injects labelled attacks, and feeds
every event through the monitor as the audit stream would. An attack counts as detected when
its identity's risk crosses the notify threshold (40) between the attack's start and 60 s after
its end; any other crossing is a false positive. Prints precision, recall and time to
detection per attack type.

    .venv/bin/python bench/anomaly_eval.py            # default scenario (~20 s)
    .venv/bin/python bench/anomaly_eval.py --quick    # smaller population
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tessera.clock import FakeClock
from tessera.monitor.baseline import Event
from tessera.monitor.engine import Monitor, MonitorConfig

DAY, HOUR, MINUTE = 86400.0, 3600.0, 60.0
THRESHOLD = 40
ATTACKS = ("stolen_credential", "scraping", "privilege_probing", "dormant_revived",
           "escalation")


@dataclass
class Agent:
    name: str
    kind: str  # office | batch | service | dormant
    hours: list[int]
    rate: float  # mean requests per active minute
    nets: list[str]
    creds: list[str]
    resources: list[str]
    actions: list[str]
    weights: list[float]


@dataclass
class Attack:
    kind: str
    victim: str
    start: float
    end: float
    detected_at: float | None = None


@dataclass
class Scenario:
    events: list[Event] = field(default_factory=list)
    attacks: list[Attack] = field(default_factory=list)


def make_agents(rng: random.Random, n: int, dormant: int) -> list[Agent]:
    agents = []
    for i in range(n + dormant):
        kind = "dormant" if i >= n else rng.choices(["office", "batch", "service"],
                                                     [0.6, 0.2, 0.2])[0]
        if kind in ("office", "dormant"):
            start = rng.randint(6, 10)
            hours = list(range(start, start + rng.randint(8, 10)))
            rate = rng.uniform(0.5, 3.0)
        elif kind == "batch":
            start = rng.randint(0, 4)
            hours = list(range(start, start + rng.randint(1, 3)))
            rate = rng.uniform(4, 12)
        else:
            hours = list(range(24))
            rate = rng.uniform(0.2, 1.5)
        n_nets = 2 if rng.random() < 0.3 else 1
        nets = [f"10.{i // 200}.{i % 200}.{k + 1}" if k == 0 else f"10.250.{i % 250}.{k + 1}"
                for k in range(n_nets)]
        team = rng.randint(0, 9)
        resources = [f"ds:team{team}/{k}" for k in rng.sample(range(40), rng.randint(5, 20))]
        actions = ["read", "list"] + (["write"] if rng.random() < 0.5 else [])
        agents.append(Agent(f"agent-{i:03d}", kind, [h % 24 for h in hours], rate, nets,
                            [f"kid-{i}-{k}" for k in range(n_nets)], resources, actions,
                            [0.8, 0.15, 0.05][:len(actions)]))
    return agents


def normal_events(rng: random.Random, a: Agent, t0: float, days: int, seq: list[int],
                  benign_new: float, out: list[Event]) -> None:
    for day in range(days):
        for hour in a.hours:
            base = t0 + day * DAY + hour * HOUR
            count = _poisson(rng, a.rate * 60)
            for _ in range(count):
                k = rng.randrange(len(a.nets))
                out.append(_event(seq, base + rng.uniform(0, HOUR), "authz.decision.made",
                                  a.name, rng.choices(a.actions, a.weights[:len(a.actions)])[0],
                                  rng.choice(a.resources), a.nets[k], a.creds[k],
                                  "failure" if rng.random() < 0.01 else "success"))
            if rng.random() < 0.25:  # a token every few hours
                out.append(_event(seq, base + rng.uniform(0, HOUR), "oauth.token.issued",
                                  a.name, "client_credentials", "https://api", a.nets[0],
                                  a.creds[0]))
        if rng.random() < benign_new:  # legitimately starts using a new dataset
            t = t0 + day * DAY + rng.choice(a.hours) * HOUR + rng.uniform(0, HOUR)
            res = f"ds:new/{a.name}/{day}"
            for j in range(rng.randint(1, 5)):
                out.append(_event(seq, t + j * 30, "authz.decision.made", a.name, "read", res,
                                  a.nets[0], a.creds[0]))
            a.resources.append(res)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, round(rng.gauss(lam, lam ** 0.5)))
    n, p, limit = 0, 1.0, pow(2.718281828, -lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


def _event(seq: list[int], ts: float, type: str, who: str, action: str, resource: str,
           source: str, cred: str, outcome: str = "success") -> Event:
    seq[0] += 1
    return Event(seq=seq[0], ts=ts, type=type, identity=who, outcome=outcome, action=action,
                 resource=resource, source=source, credential=cred)


def inject(rng: random.Random, kind: str, a: Agent, start: float, seq: list[int],
           out: list[Event]) -> Attack:
    """One labelled attack of `kind` on agent `a` from `start`."""
    evs: list[Event] = []
    t = start
    if kind == "stolen_credential":
        net = f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        for _ in range(20):
            res = rng.choice(a.resources) if rng.random() < 0.6 else \
                f"ds:team{rng.randint(0, 9)}/{rng.randint(40, 99)}"
            evs.append(_event(seq, t, "authz.decision.made", a.name, "read", res, net,
                              a.creds[0]))
            t += rng.uniform(5, 30)
    elif kind == "scraping":
        for k in range(300):
            evs.append(_event(seq, t, "authz.decision.made", a.name, "read",
                              f"ds:export/{k}", a.nets[0], a.creds[0]))
            t += rng.uniform(0.3, 1.5)
    elif kind == "privilege_probing":
        for k in range(30):
            evs.append(_event(seq, t, "authz.decision.made", a.name,
                              rng.choice(["read", "write", "delete", "admin"]),
                              f"ds:team{(k * 7) % 10}/{k}", a.nets[0], a.creds[0],
                              "failure" if rng.random() < 0.8 else "success"))
            t += rng.uniform(1, 6)
    elif kind == "dormant_revived":
        for _ in range(10):
            evs.append(_event(seq, t, "authz.decision.made", a.name, "read",
                              rng.choice(a.resources), a.nets[0], a.creds[0]))
            t += rng.uniform(10, 60)
    elif kind == "escalation":
        for k, action in enumerate(["grant_role", "policy:write", "secrets:read", "key:export",
                                    "identity:create", "audit:delete"] * 2):
            evs.append(_event(seq, t, "authz.decision.made", a.name, action,
                              f"sys:{action.split(':')[0]}/{k}", a.nets[0], a.creds[0],
                              "failure" if k % 3 == 2 else "success"))
            t += rng.uniform(2, 10)
    out.extend(evs)
    return Attack(kind, a.name, start, evs[-1].ts)


def build(seed: int, agents_n: int, per_type: int, days: int) -> tuple[Scenario, float]:
    rng = random.Random(seed)
    t0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    dormant_n = per_type
    agents = make_agents(rng, agents_n, dormant_n)
    sc = Scenario()
    seq = [0]
    active = [a for a in agents if a.kind != "dormant"]
    # A few agents are redeployed on the last day into another cluster of the organisation
    # (a network other agents use): benign noise for the network detectors.
    movers = {a.name for a in rng.sample(active, max(1, agents_n // 20))}
    for a in agents:
        if a.kind == "dormant":  # active for four days, five weeks before everyone else
            normal_events(rng, a, t0 - 35 * DAY, 4, seq, 0.0, sc.events)
        elif a.name in movers:
            normal_events(rng, a, t0, days - 1, seq, 0.05, sc.events)
            other = rng.choice([b for b in active if b.name not in movers])
            a.nets = [other.nets[0][:-1] + "77"]
            a.creds = a.creds[:1]
            normal_events(rng, a, t0 + (days - 1) * DAY, 1, seq, 0.05, sc.events)
        else:
            normal_events(rng, a, t0, days, seq, 0.05, sc.events)
    attack_day = t0 + (days - 1) * DAY
    pool = [a for a in active if a.name not in movers]
    rng.shuffle(pool)
    dormant = [a for a in agents if a.kind == "dormant"]
    for kind in ATTACKS:
        for _ in range(per_type):
            victim = dormant.pop() if kind == "dormant_revived" else pool.pop()
            start = attack_day + rng.choice(victim.hours) * HOUR + rng.uniform(0, HOUR)
            sc.attacks.append(inject(rng, kind, victim, start, seq, sc.events))
    sc.events.sort(key=lambda e: e.ts)
    return sc, attack_day


def evaluate(sc: Scenario, clock: FakeClock) -> dict[str, object]:
    monitor = Monitor(MonitorConfig())
    above: dict[str, bool] = {}
    crossings: list[tuple[str, float]] = []
    alerts = 0
    for e in sc.events:
        clock.set(datetime.fromtimestamp(e.ts, UTC))
        alerts += len(monitor.observe(e))
        risk = monitor.risk.value(e.identity, e.ts)
        was = above.get(e.identity, False)
        if risk >= THRESHOLD and not was:
            crossings.append((e.identity, e.ts))
        above[e.identity] = risk >= THRESHOLD
    tp_crossings = set()
    for atk in sc.attacks:
        for i, (who, ts) in enumerate(crossings):
            if who == atk.victim and atk.start <= ts <= atk.end + 60:
                atk.detected_at = ts
                tp_crossings.add(i)
                break
    fp = len(crossings) - len(tp_crossings)
    # A crossing during an attack window but after the first one is not a false positive.
    for i, (who, ts) in enumerate(crossings):
        if i not in tp_crossings and any(a.victim == who and a.start <= ts <= a.end + 60
                                         for a in sc.attacks):
            fp -= 1
    tp = len(tp_crossings)
    return {"alerts": alerts, "crossings": len(crossings), "tp": tp, "fp": fp,
            "precision": tp / (tp + fp) if tp + fp else 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--per-type", type=int, default=6)
    ap.add_argument("--days", type=int, default=5, help="days simulated (last one attacked)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="40 agents, 3 attacks per type")
    args = ap.parse_args()
    if args.quick:
        args.agents, args.per_type = 40, 3
    started = time.perf_counter()
    sc, _ = build(args.seed, args.agents, args.per_type, args.days)
    clock = FakeClock()
    result = evaluate(sc, clock)
    elapsed = time.perf_counter() - started
    print(f"events {len(sc.events)}  agents {args.agents}+{args.per_type} dormant  "
          f"attacks {len(sc.attacks)}  alerts {result['alerts']}  ({elapsed:.1f} s)")
    print(f"{'attack':<20} {'n':>3} {'recall':>7} {'median TTD s':>13} {'max TTD s':>10}")
    worst = 0.0
    for kind in ATTACKS:
        atks = [a for a in sc.attacks if a.kind == kind]
        ttd = [a.detected_at - a.start for a in atks if a.detected_at is not None]
        worst = max([worst, *ttd])
        print(f"{kind:<20} {len(atks):>3} {len(ttd) / len(atks):>7.2f} "
              f"{statistics.median(ttd) if ttd else float('nan'):>13.1f} "
              f"{max(ttd) if ttd else float('nan'):>10.1f}")
    detected = sum(a.detected_at is not None for a in sc.attacks)
    recall = detected / len(sc.attacks)
    print(f"overall recall {recall:.2f}  precision {result['precision']:.2f} "
          f"(true {result['tp']}, false {result['fp']} threshold crossings at risk "
          f">= {THRESHOLD})  slowest detection {worst:.1f} s")
    goal = recall >= 0.9 and result["precision"] >= 0.9 and worst <= 60  # type: ignore[operator]
    print("goal (recall >= 0.9 at precision >= 0.9, every detection within 60 s):",
          "met" if goal else "NOT met")


if __name__ == "__main__":
    main()

"""Decision benchmarks (issue 5): each figure beside a baseline measured in the same run.

    .venv/bin/python bench/authz_decisions.py            # ~40 s: 10k and 100k identities
    .venv/bin/python bench/authz_decisions.py --full     # adds 1,000,000 identities

1. in-process decision vs raw cedarpy on the same prepared policy set and entities;
2. 1,000 policies: Tessera's scope index vs raw cedarpy handed the whole set;
3. decision p50 across registry sizes (10k -> 100k [-> 1M] identities);
4. HTTP requests/s of /access/v1/evaluation (token auth + decision log, SQLite) vs a minimal
   AuthZEN endpoint that only calls cedarpy;
5. /access/v1/evaluations with 100 items per request vs single requests, in decisions/s.
Rows 4 and 5 are measured in alternating slices (see `interleaved`), so that the other load
on a shared machine weighs on the baseline and on Tessera alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cedarpy
from fastapi import FastAPI, Request

from tessera.authz.engine import EvalRequest, IdentityRecord, Snapshot, SnapshotSource
from tessera.authz.policies import build_policy_set, parse_files

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
POLICIES = """
@id("read-public") permit (principal is Agent, action == Action::"read", resource is Dataset)
when { resource.classification == "public" };
@id("ml-read-train") permit (principal in Role::"ml", action in [Action::"read", Action::"train"],
  resource is Dataset) when { resource.classification != "restricted" };
@id("no-restricted") @reason("restricted") forbid (principal, action, resource is Dataset)
when { resource.classification == "restricted" &&
       !(principal has clearance && principal.clearance == "restricted") };
@id("pii") @mask("ssn,email") permit (principal is Agent, action == Action::"read",
  resource is Dataset) when { resource has data_classes && resource.data_classes.contains("PII") };
@id("tools") permit (principal in Role::"tool-user", action == Action::"call", resource is Tool);
@id("hours") forbid (principal, action == Action::"export", resource)
unless { context.hour >= 8 && context.hour < 18 };
"""


def paired_per_call(base: Callable[[], Any], ours: Callable[[], Any],
                    seconds: float = 2.0) -> tuple[float, float]:
    """Seconds per call of two functions, measured in alternating batches of 50 so that a
    change in the machine's load weighs on both alike (medians of the batch means)."""
    base(), ours()
    samples: tuple[list[float], list[float]] = ([], [])
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for fn, out in ((base, samples[0]), (ours, samples[1])):
            t = time.perf_counter()
            for _ in range(50):
                fn()
            out.append((time.perf_counter() - t) / 50)
    return statistics.median(samples[0]), statistics.median(samples[1])


def fresh_now() -> Callable[[], datetime]:
    """A distinct instant per call: no decision may reuse the previous one's context."""
    tick = itertools.count()
    return lambda: NOW + timedelta(microseconds=next(tick) % 1_000_000)


def identities(n: int) -> dict[str, IdentityRecord]:
    return {f"idn{i}": IdentityRecord(f"idn{i}", "agent", f"agent-{i}", "active", None, "",
                                      {"team": f"t{i % 50}"}, None,
                                      ("ml",) if i % 2 else ("tool-user",),
                                      f"spiffe://b/agent/agent-{i}") for i in range(n)}


def catalog() -> dict[tuple[str, str], dict[str, Any]]:
    ents = {("Dataset", f"d{i}"): {"uid": {"type": "Dataset", "id": f"d{i}"},
                                   "attrs": {"classification": ["public", "internal",
                                                                "restricted"][i % 3],
                                             "data_classes": ["PII"] if i % 4 == 0 else []},
                                   "parents": []} for i in range(100)}
    for r in ("ml", "tool-user"):
        ents[("Role", r)] = {"uid": {"type": "Role", "id": r}, "attrs": {}, "parents": []}
    return ents


def bench_inprocess() -> dict[str, float]:
    pp = parse_files({"p.cedar": POLICIES})
    ids = identities(1000)
    snap = Snapshot(SnapshotSource(1, 1, pp, ids, catalog()))
    ps = build_policy_set(pp.policies)
    ents = cedarpy.Entities.from_json_str(json.dumps(
        [r.entity() for r in ids.values()] + list(catalog().values())))
    req = EvalRequest(("Agent", "idn5"), ("Action", "read"), ("Dataset", "d4"))
    ctx = snap.context_for(req, NOW, "active", 0)
    raw_req = {"principal": {"type": "Agent", "id": "idn5"},
               "action": {"type": "Action", "id": "read"},
               "resource": {"type": "Dataset", "id": "d4"}, "context": ctx}
    assert cedarpy.is_authorized(raw_req, ps, ents).allowed == snap.evaluate(req, NOW).allowed
    now = fresh_now()
    raw, ours = paired_per_call(
        lambda: cedarpy.is_authorized(raw_req, ps, ents),
        lambda: snap.evaluate(EvalRequest(("Agent", "idn5"), ("Action", "read"),
                                          ("Dataset", "d4")), now()), 4.0)
    return {"raw_us": raw * 1e6, "tessera_us": ours * 1e6, "ratio": ours / raw}


def bench_1000_policies() -> dict[str, float]:
    rnd = random.Random(5)
    lines = []
    for i in range(1000):
        action = f"act{rnd.randrange(200)}"
        rtype = rnd.choice(["Dataset", "Tool", "Api", "Model"])
        lines.append(f'@id("p{i}") permit (principal in Role::"r{i % 40}", '
                     f'action == Action::"{action}", resource is {rtype}) '
                     f'when {{ resource has level && resource.level > {i % 7} }};')
    lines.append('@id("hit") permit (principal, action == Action::"act7", resource is Dataset);')
    pp = parse_files({"many.cedar": "\n".join(lines)})
    ids = identities(100)
    ents_map = catalog()
    snap = Snapshot(SnapshotSource(1, 1, pp, ids, ents_map))
    ps = build_policy_set(pp.policies)
    ents = cedarpy.Entities.from_json_str(json.dumps(
        [r.entity() for r in ids.values()] + list(ents_map.values())))
    req = EvalRequest(("Agent", "idn3"), ("Action", "act7"), ("Dataset", "d1"))
    ctx = snap.context_for(req, NOW, "active", 0)
    raw_req = {"principal": {"type": "Agent", "id": "idn3"},
               "action": {"type": "Action", "id": "act7"},
               "resource": {"type": "Dataset", "id": "d1"}, "context": ctx}
    assert cedarpy.is_authorized(raw_req, ps, ents).allowed == snap.evaluate(req, NOW).allowed
    now = fresh_now()
    raw, ours = paired_per_call(
        lambda: cedarpy.is_authorized(raw_req, ps, ents),
        lambda: snap.evaluate(EvalRequest(("Agent", "idn3"), ("Action", "act7"),
                                          ("Dataset", "d1")), now()), 4.0)
    _ps, chosen = snap.policy_set("Agent", ("Action", "act7"), "Dataset")
    return {"raw_us": raw * 1e6, "tessera_us": ours * 1e6, "speedup": raw / ours,
            "policies_handed_to_cedar": len(chosen)}


def bench_registry_sizes(sizes: list[int]) -> list[dict[str, float]]:
    pp = parse_files({"p.cedar": POLICIES})
    out = []
    for n in sizes:
        t = time.perf_counter()
        snap = Snapshot(SnapshotSource(1, 1, pp, identities(n), catalog()))
        build = time.perf_counter() - t
        rnd = random.Random(n)
        warm = EvalRequest(("Agent", "idn1"), ("Action", "read"), ("Dataset", "d1"))
        snap.evaluate(warm, NOW)
        lat_warm, lat_cold = [], []
        now = fresh_now()
        for _ in range(2000):
            t = time.perf_counter()
            snap.evaluate(EvalRequest(("Agent", "idn1"), ("Action", "read"), ("Dataset", "d1")),
                          now())
            lat_warm.append(time.perf_counter() - t)
            who = f"idn{rnd.randrange(n)}"
            t = time.perf_counter()
            snap.evaluate(EvalRequest(("Agent", who), ("Action", "read"),
                                      ("Dataset", f"d{rnd.randrange(100)}")), now())
            lat_cold.append(time.perf_counter() - t)
        out.append({"identities": n, "build_s": build,
                    "p50_same_principal_us": statistics.median(lat_warm) * 1e6,
                    "p50_random_principal_us": statistics.median(lat_cold) * 1e6})
    return out


def _http_setup(tmp: Path) -> tuple[Any, dict[str, str], Any]:
    from fastapi.testclient import TestClient
    from joserfc import jwt
    from joserfc.jwk import ECKey

    from tessera.api.app import create_app
    from tessera.config import Settings
    from tessera.container import build
    from tessera.db import make_engine, migrate
    from tessera.db.meta import set_meta
    from tessera.identity.schemas import CredentialCreate, IdentityCreate

    url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    settings = Settings(data_dir=tmp, database_url=url, issuer="http://bench.test",
                        master_key=None, node_id="bench")
    svc = build(settings, trust_domain="bench.test")
    key = ECKey.generate_key("P-256", private=True)
    with svc.sessions() as s:
        set_meta(s, "trust_domain", "bench.test")
        svc.keys.create(s, "ES256")
        admin = svc.identities.register(s, IdentityCreate(name="root", kind="human"), actor="b")
        svc.identities.grant_role(s, admin.id, "admin", actor="b")
        cred = svc.identities.add_credential(s, admin.id, CredentialCreate(
            jwk=key.as_dict(private=False)), actor="b")
        for i in range(200):
            svc.identities.register(s, IdentityCreate(
                name=f"agent-{i}", kind="agent", owner=admin.id, purpose="bench",
                expires_at=datetime.now(UTC) + timedelta(days=10)), actor="b")
        s.commit()
    client = TestClient(create_app(services=svc, run_jobs=False), base_url="http://bench.test")
    client.__enter__()
    now = int(time.time())
    assertion = jwt.encode({"alg": "ES256", "kid": cred.kid},
                           {"iss": admin.id, "sub": admin.id,
                            "aud": "http://bench.test/oauth2/token", "iat": now,
                            "exp": now + 60, "jti": secrets.token_hex(8)}, key)
    tok = client.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {tok}"}
    r = client.post("/v1/policies/default", headers=headers,
                    json={"files": {"p.cedar": 'permit (principal == User::"alice", action == '
                                                'Action::"read", resource is Dataset);'}})
    assert r.status_code == 201, r.text
    client.post("/v1/entities", headers=headers, json={"entities": [
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]})
    return client, headers, svc


def _minimal_client() -> Any:
    from fastapi.testclient import TestClient

    ps = cedarpy.PolicySet.from_str('permit (principal == User::"alice", action == '
                                    'Action::"read", resource is Dataset);')
    ents = cedarpy.Entities.from_json_str(json.dumps([
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]))
    app = FastAPI()

    @app.post("/access/v1/evaluation")
    async def evaluation(request: Request) -> dict[str, Any]:
        b = await request.json()
        req = {"principal": {"type": "User", "id": b["subject"]["id"]},
               "action": {"type": "Action", "id": b["action"]["name"]},
               "resource": {"type": b["resource"]["type"], "id": b["resource"]["id"]},
               "context": b.get("context", {})}
        return {"decision": cedarpy.is_authorized(req, ps, ents).allowed}

    return TestClient(app)


def rate(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    n, end = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def interleaved(fns: list[Callable[[], Any]], seconds: float, rounds: int = 4) -> list[float]:
    """Calls/s of each fn, measured in alternating slices so that a change in the machine's
    load during the run weighs on every figure alike."""
    for fn in fns:
        fn()
    counts, spent = [0] * len(fns), [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            end = start + seconds / rounds
            while time.perf_counter() < end:
                fn()
                counts[i] += 1
            spent[i] += time.perf_counter() - start
    return [c / t for c, t in zip(counts, spent, strict=True)]


def bench_http(seconds: float) -> dict[str, float]:
    body = {"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
            "resource": {"type": "Dataset", "id": "d1"}}
    batch = {"subject": body["subject"], "action": body["action"],
             "evaluations": [{"resource": {"type": "Dataset", "id": f"d{i}"}}
                             for i in range(100)]}
    with tempfile.TemporaryDirectory() as tmp:
        client, headers, svc = _http_setup(Path(tmp))
        try:
            assert client.post("/access/v1/evaluation", headers=headers,
                               json=body).json()["decision"] is True
            minimal = _minimal_client()
            assert minimal.post("/access/v1/evaluation", json=body).json()["decision"] is True
            r = client.post("/access/v1/evaluations", headers=headers, json=batch).json()
            assert len(r["evaluations"]) == 100 and all(e["decision"] for e in r["evaluations"])
            base, ours, batches = interleaved([
                lambda: minimal.post("/access/v1/evaluation", json=body),
                lambda: client.post("/access/v1/evaluation", headers=headers, json=body),
                lambda: client.post("/access/v1/evaluations", headers=headers, json=batch)],
                seconds)
            batch_rate = batches * 100
        finally:
            client.__exit__(None, None, None)
            svc.close()
    return {"minimal_rps": base, "tessera_rps": ours, "ratio": ours / base,
            "single_decisions_per_s": ours, "batch100_decisions_per_s": batch_rate,
            "batch_speedup": batch_rate / ours}


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also 1,000,000 identities")
    ap.add_argument("--http-seconds", type=float, default=4.0)
    args = ap.parse_args()
    sizes = [10_000, 100_000] + ([1_000_000] if args.full else [])
    t0 = time.perf_counter()
    r1 = bench_inprocess()
    print(f"1. in-process decision: raw cedarpy {r1['raw_us']:.1f} us, Tessera "
          f"{r1['tessera_us']:.1f} us -> {r1['ratio']:.2f}x (target <= 1.25x)")
    r2 = bench_1000_policies()
    print(f"2. 1,000 policies: raw cedarpy {r2['raw_us']:.1f} us, Tessera {r2['tessera_us']:.1f}"
          f" us ({r2['policies_handed_to_cedar']} policies handed to Cedar) -> "
          f"{r2['speedup']:.1f}x faster (target >= 5x)")
    rows = bench_registry_sizes(sizes)
    for row in rows:
        print(f"3. {row['identities']:>9,} identities: snapshot build {row['build_s']:.2f} s, "
              f"p50 same principal {row['p50_same_principal_us']:.1f} us, p50 random principal "
              f"{row['p50_random_principal_us']:.1f} us")
    first, last = rows[0], rows[-1]
    print(f"   p50 ratio {last['identities']:,} vs {first['identities']:,}: same principal "
          f"{last['p50_same_principal_us'] / first['p50_same_principal_us']:.2f}x, random "
          f"{last['p50_random_principal_us'] / first['p50_random_principal_us']:.2f}x "
          f"(target <= 1.2x)")
    r4 = bench_http(args.http_seconds)
    print(f"4. HTTP evaluation: minimal cedarpy endpoint {r4['minimal_rps']:.0f} req/s, Tessera "
          f"(token auth + policy check of the caller + decision log) {r4['tessera_rps']:.0f} "
          f"req/s -> {r4['ratio']:.2f}x (target >= 0.7x)")
    print(f"5. batch of 100: {r4['batch100_decisions_per_s']:.0f} decisions/s vs single "
          f"{r4['single_decisions_per_s']:.0f} decisions/s -> {r4['batch_speedup']:.1f}x "
          f"(target >= 20x)")
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Decision latency with the decision log (audit) on and off, SQLite and PostgreSQL.

In process, one thread, the same prepared policy set and principal: `evaluate` alone (audit
off), then `evaluate` + its audit event + commit, once with the event joining the caller's
transaction and once through the group committer (callers still wait until it is durable).

    .venv/bin/python bench/decision_audit.py [--n 400] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_throughput import database  # noqa: E402

from tessera.clock import SystemClock  # noqa: E402
from tessera.config import Settings  # noqa: E402
from tessera.container import build  # noqa: E402
from tessera.db import make_engine, migrate  # noqa: E402
from tessera.identity.schemas import IdentityCreate  # noqa: E402
from tessera.keys.software import SoftwareKeyProvider  # noqa: E402

POLICY = """
@id("agents-read")
permit (principal is Agent, action == Action::"read", resource is Dataset);
"""


def run(url: str, tmp: Path, n: int) -> dict[str, float]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    out: dict[str, float] = {}
    master = Fernet.generate_key().decode()
    for mode in ("off", "in-transaction", "group commit"):
        settings = Settings(data_dir=tmp, database_url=url, issuer="http://bench",
                            master_key=master)
        settings.audit.group_commit = mode == "group commit"
        svc = build(settings, clock=SystemClock(),
                    provider=SoftwareKeyProvider(settings.master_key.get_secret_value().encode()),
                    trust_domain="bench")
        with svc.sessions() as s:
            if not svc.keys.jwks()["keys"]:
                svc.keys.create(s, "ES256")
            owner = svc.identities.register(s, IdentityCreate(name=f"o-{mode[:2]}", kind="human"),
                                            actor="bench")
            bot = svc.identities.register(s, IdentityCreate(
                name=f"bot-{mode[:2]}", kind="agent", owner=owner.id, purpose="bench",
                expires_at=svc.clock.now() + timedelta(days=1)), actor="bench")
            svc.authz.push(s, "default", {"main.cedar": POLICY}, author="bench")
            svc.authz.put_entity(s, "catalog", {"uid": {"type": "Dataset", "id": "d"},
                                                "attrs": {}, "parents": []}, actor="bench")
            s.commit()
        from tessera.authz.engine import EvalRequest

        req = EvalRequest(principal=("Agent", bot.id), action=("Action", "read"),
                          resource=("Dataset", "d"))
        assert svc.authz.evaluate(req).allowed

        def once() -> None:
            decision = svc.authz.evaluate(req)
            if mode == "off":
                return
            with svc.sessions() as s:
                svc.authz.record_decision(s, req, decision, actor=bot.id, ctx=None)
                s.commit()

        for _ in range(50):
            once()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            once()
            samples.append(time.perf_counter() - t)
        out[mode] = statistics.median(samples)
        svc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    for backend in args.backends.split(","):
        with database(backend) as url, tempfile.TemporaryDirectory() as tmp:
            r = run(url, Path(tmp), args.n)
        off = r["off"]
        print(f"{backend}: decision p50  audit off {off * 1e6:7.0f} us | "
              f"in-transaction {r['in-transaction'] * 1e6:7.0f} us "
              f"(x{r['in-transaction'] / off:.1f}) | group commit "
              f"{r['group commit'] * 1e6:7.0f} us (x{r['group commit'] / off:.1f})")


if __name__ == "__main__":
    main()

"""The audit group committer's own CPU per token: batches of real token units, one thread.

Builds the units the token endpoint hands to the committer (an `oauth.token.issued` event,
the rev check, the jti use; client authentication and signing done beforehand, not
measured), then applies them in batches of `--batch` on one connection exactly as
`GroupCommitter` does (`Transactions.begin`, `AuditService.apply_units`, `Transactions.commit`)
and reports CPU and wall time per token. No threads, futures or HTTP: the committer's own
work, database round trips included. SQLite by default; PostgreSQL with --database-url (a
scratch database is created on that server and dropped).

    .venv/bin/python bench/committer.py [--tokens 6000] [--batch 8] [--database-url URL]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_database
from token_issuance import assertions, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    from tessera.audit import RequestContext
    from tessera.config import Settings
    from tessera.container import build
    from tessera.db.pipeline import Transactions
    from tessera.oauth.service import TokenRequest

    database = scratch_database(args.database_url, "tessera_committer") \
        if args.database_url else nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, database as url:
        data_dir = Path(tmp) / "data"
        agents = prepare(data_dir, url, 20)
        svc = build(Settings(data_dir=data_dir, database_url=url))
        tokens = svc.tokens
        ctx = RequestContext(request_id="bench", source="127.0.0.1")

        def units(n: int) -> list[Any]:
            reqs = [TokenRequest(form=f, resources=[], ctx=ctx, now=tokens._clock.now())
                    for f in assertions(agents, tokens.token_endpoint, n)]
            for r in reqs:
                authn = tokens.authenticate_client(r)
                assert authn is not None
                tokens.issue(r, subject=authn.client.client_id, client=authn.client,
                             scope="read", audience=tokens.issuer,
                             action="client_credentials",
                             data={"method": authn.method, "kid": authn.key.kid})
            return [r.unit for r in reqs]

        engine = svc.sessions.kw["bind"]
        conn = engine.connect()
        session = svc.sessions(bind=conn)
        txn = Transactions(conn, session)

        def run(batch: list[Any]) -> None:
            for i in range(0, len(batch), args.batch):
                txn.begin()
                results = svc.audit.apply_units(session, batch[i:i + args.batch])
                if any(isinstance(r, Exception) for r in results):
                    raise SystemExit(f"a unit was refused: {results}")
                txn.commit(session)

        run(units(400))  # warm: prepared statements, caches
        measured = units(args.tokens)
        cpu0, t0 = time.process_time(), time.perf_counter()
        run(measured)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        session.close()
        conn.close()
        svc.close()
    db = "PostgreSQL" if url else "SQLite"
    print(f"audit committer alone: {db}, batches of {args.batch}, {args.tokens} tokens, "
          f"{'pipelined' if db == 'PostgreSQL' else 'one statement at a time'}")
    print(f"  CPU / token   {cpu / args.tokens * 1e6:8.1f} us")
    print(f"  wall / token  {wall / args.tokens * 1e6:8.1f} us")


if __name__ == "__main__":
    main()

"""Where a token's CPU goes, without HTTP: the token endpoint's service path in process.

Runs `TokenService.handle_async` (what the /oauth2/token lane awaits) on an event loop with
C concurrent requests against a fresh data directory (SQLite by default), audit on, group
commit on, and reports process CPU per token (loop thread and committer thread together). Then
the same run's pieces one by one, each measured alone in a loop: the assertion check
(parse + verify + claims), the access-token signing, the audit event construction, and the
group commit of a unit per token at the batch size the run saw. Beside them, raw ES256 sign and
joserfc verify: the crypto floor. The HTTP layer is `bench/token_issuance.py`'s business.

    .venv/bin/python bench/token_path.py [--tokens 6000] [--concurrency 8] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_issuance import assertions, prepare, raw_sign_verify_cost  # noqa: E402


def cpu() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    from tessera.audit import RequestContext
    from tessera.config import Settings
    from tessera.container import build
    from tessera.oauth.service import TokenRequest

    sign, verify = raw_sign_verify_cost()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        agents = prepare(data_dir, args.database_url, args.agents)
        settings = Settings(data_dir=data_dir, database_url=args.database_url)
        svc = build(settings)
        tokens = svc.tokens
        endpoint = tokens.token_endpoint
        headers = {"content-type": "application/x-www-form-urlencoded"}
        ctx = RequestContext(request_id="bench", source="127.0.0.1")

        async def run(forms: list[dict[str, str]]) -> None:
            queue = list(reversed(forms))

            async def worker() -> None:
                while queue:
                    form = queue.pop()
                    await tokens.handle_async(form, [], ctx, method="POST", url="",
                                              headers=headers, client_cert=None)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        uvloop.run(run(assertions(agents, endpoint, 400)))  # warm: cache, committer
        committer = svc.audit.committer
        batches0, events0 = committer.batches, committer.events
        forms = assertions(agents, endpoint, args.tokens)
        c0, t0 = cpu(), time.perf_counter()
        uvloop.run(run(forms))
        total, elapsed = (cpu() - c0) / args.tokens, time.perf_counter() - t0
        batch = (committer.events - events0) / max(1, committer.batches - batches0)

        # The pieces, each alone. Fresh assertions (their jtis go to a unit nobody commits).
        n = 2000
        forms = assertions(agents, endpoint, n)
        reqs = [TokenRequest(form=f, resources=[], ctx=ctx, now=tokens._clock.now(), io=False)
                for f in forms]
        c0 = cpu()
        authns = [tokens.authenticate_client(r) for r in reqs]
        authn = (cpu() - c0) / n
        c0 = cpu()
        for r, a in zip(reqs, authns):
            tokens.issue(r, subject=a.client.client_id, client=a.client, scope="read",
                         audience=tokens.issuer, action="client_credentials",
                         data={"method": a.method, "kid": a.key.kid})
        issue = (cpu() - c0) / n
        c0 = cpu()
        for r, a in zip(reqs, authns):
            svc.audit.event("oauth.token.issued", actor=a.client.client_id,
                            subject=a.client.client_id, action="client_credentials",
                            resource=tokens.issuer, ctx=ctx,
                            data={"jti": "j", "scope": "read", "exp": 1, "method": a.method,
                                  "kid": a.key.kid})
        event = (cpu() - c0) / n
        # Group commit: units as the run built them, in batches of the size the run saw.
        size = max(1, round(batch))
        units = [r.unit for r in reqs]
        c0 = cpu()
        for i in range(0, n, size):
            for fut in [committer.submit(u) for u in units[i:i + size]]:
                fut.result()
        commit = (cpu() - c0) / n
        svc.close()

    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"token path in process: handle_async, {db}, concurrency {args.concurrency}, "
          f"{args.tokens} tokens, audit on")
    print(f"  tokens/s                       {args.tokens / elapsed:8.0f}")
    print(f"  CPU / token (all threads)      {total * 1e6:8.0f} us   group commit batch "
          f"{batch:.1f} units")
    print("  pieces, each measured alone (CPU / token):")
    print(f"    client authentication        {authn * 1e6:8.0f} us  (raw verify "
          f"{verify * 1e6:.0f})")
    print(f"    access token + audit event   {issue * 1e6:8.0f} us  (raw sign "
          f"{sign * 1e6:.0f}; the event alone {event * 1e6:.0f})")
    print(f"    group commit, batches of {size:<3d} {commit * 1e6:8.0f} us")
    rest = total - authn - issue - commit
    print(f"    the rest (dispatch, loop)    {rest * 1e6:8.0f} us")


if __name__ == "__main__":
    main()

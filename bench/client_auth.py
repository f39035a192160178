"""CPU per `TokenService.authenticate_client` on fresh ES256 client assertions, in process.

What the token endpoint's fast path runs for `private_key_jwt` (RFC 7523 §2.2): cached client
views, writes deferred to a unit nobody commits. Each round signs N fresh assertions (unique
jtis), then times their authentication (process CPU); rounds are listed because a garbage
collection landing in a round shows as an outlier. Beside it, joserfc's ES256 verification
alone: the floor.

    .venv/bin/python bench/client_auth.py [--assertions 3000] [--rounds 5] [--no-gc]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_issuance import assertions, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assertions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--no-gc", action="store_true", help="garbage collector off while timed")
    args = parser.parse_args()

    from joserfc import jws

    from tessera.audit import RequestContext
    from tessera.config import Settings
    from tessera.container import build
    from tessera.jwt_peek import peek_compact
    from tessera.oauth.rfc7523_client_assertion import ASSERTION_ALGS
    from tessera.oauth.service import TokenRequest

    n = args.assertions
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        agents = prepare(data_dir, None, args.agents)
        svc = build(Settings(data_dir=data_dir))
        tokens = svc.tokens
        ctx = RequestContext(request_id="bench", source="127.0.0.1")
        for form in assertions(agents, tokens.token_endpoint, 2 * args.agents):  # load the cache
            tokens.authenticate_client(TokenRequest(form=form, resources=[], ctx=ctx,
                                                    now=tokens._clock.now(),
                                                    sessions=svc.sessions))
        if args.no_gc:
            gc.disable()
        rounds = []
        for _ in range(args.rounds):
            forms = assertions(agents, tokens.token_endpoint, n)
            reqs = [TokenRequest(form=f, resources=[], ctx=ctx, now=tokens._clock.now(),
                                 io=False) for f in forms]
            c0 = time.process_time()
            for req in reqs:
                tokens.authenticate_client(req)
            rounds.append((time.process_time() - c0) / n)
        # The floor: joserfc's ES256 verification of the same assertions, nothing else.
        es256 = jws.JWSRegistry.algorithms["ES256"]
        keys = {client_id: key for client_id, key in agents}
        work = []
        for form in forms:
            peeked = peek_compact(form["client_assertion"], ASSERTION_ALGS)
            work.append((peeked.signing_input, peeked.signature, keys[peeked.claims["iss"]]))
        c0 = time.process_time()
        for signing_input, signature, key in work:
            es256.verify(signing_input, signature, key)
        floor = (time.process_time() - c0) / n
        gc.enable()
        svc.close()

    print(f"client authentication (private_key_jwt, ES256), {n} assertions a round, "
          f"GC {'off' if args.no_gc else 'on'}")
    print(f"  CPU / assertion, median       {statistics.median(rounds) * 1e6:8.1f} us   "
          f"rounds {' '.join(f'{r * 1e6:.1f}' for r in rounds)}")
    print(f"  joserfc ES256 verify alone    {floor * 1e6:8.1f} us")


if __name__ == "__main__":
    main()

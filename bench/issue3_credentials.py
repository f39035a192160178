"""Issue 3 benchmark: DPoP-bound issuance, token-exchange issuance and SDK verify() per second,
each beside the raw sign/verify cost measured in the same run.

In-process (no HTTP): the token service on a fresh SQLite file with audit on, one transaction
per issued token, exactly as the token endpoint runs it. Client-side work (assertions, DPoP
proofs) is prepared before the clock starts.

    .venv/bin/python bench/issue3_credentials.py [--quick] [--n 300]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT_TYPE = "urn:ietf:params:oauth:token-type:access_token"
RS = "https://rs.bench"


def per_call(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    """Median over rounds of the mean seconds per call."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - start) / n)
    return statistics.median(out)


def raw_costs(n: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tessera.keys.jws import sign_compact
    from tessera.keys.software import SoftwareSigner, public_jwk_of

    private = ec.generate_private_key(ec.SECP256R1())
    signer = SoftwareSigner("k", "ES256", private)
    claims = {"iss": "x", "sub": "y", "aud": "z", "exp": 2_000_000_000, "iat": 1, "jti": "j",
              "client_id": "y", "scope": "read"}
    token = sign_compact(signer, claims, typ="at+jwt")
    pub = ECKey.import_key(public_jwk_of(private.public_key(), "k", "ES256"))
    return {"sign": per_call(lambda: sign_compact(signer, claims, typ="at+jwt"), n),
            "verify": per_call(lambda: jwt.decode(token, pub, algorithms=["ES256"]), n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="tokens per issuance measurement")
    parser.add_argument("--quick", action="store_true", help="small run (~10 s)")
    args = parser.parse_args()
    n = 150 if args.quick else args.n
    n_verify = 1000 if args.quick else 4 * args.n

    from cryptography.fernet import Fernet

    from tessera.audit import RequestContext
    from tessera.clock import SystemClock
    from tessera.config import Settings
    from tessera.container import build
    from tessera.db import make_engine, migrate
    from tessera.db.meta import set_meta
    from tessera.identity.schemas import CredentialCreate, IdentityCreate
    from tessera.keys.software import SoftwareKeyProvider
    from tessera.sdk import Verifier
    from tessera.sdk._jose import dpop_proof

    raw = raw_costs(500 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        master = Fernet.generate_key()
        settings = Settings(data_dir=Path(tmp), database_url=url, issuer="http://bench",
                            master_key=master.decode())
        svc = build(settings, clock=SystemClock(), engine=engine,
                    provider=SoftwareKeyProvider(master), trust_domain="bench")
        now = datetime.now(UTC)
        keys: dict[str, ECKey] = {}
        with svc.sessions() as s:
            set_meta(s, "trust_domain", "bench")
            svc.keys.create(s, "ES256")
            user = svc.identities.register(s, IdentityCreate(name="user", kind="human",
                                                             allowed_scopes=["read"]), actor="b")
            agent = svc.identities.register(s, IdentityCreate(
                name="agent", kind="agent", owner=user.id, purpose="bench",
                expires_at=now + timedelta(days=1), allowed_scopes=["read"],
                allowed_audiences=[RS], may_act_for=[user.id]), actor="b")
            for row in (user, agent):
                keys[row.id] = ECKey.generate_key("P-256", private=True)
                svc.identities.add_credential(s, row.id, CredentialCreate(
                    jwk=keys[row.id].as_dict(private=False)), actor="b")
            s.commit()
        endpoint = svc.tokens.token_endpoint

        def assertion(client_id: str) -> str:
            t = int(time.time())
            return jwt.encode({"alg": "ES256", "kid": keys[client_id].thumbprint()},
                              {"iss": client_id, "sub": client_id, "aud": endpoint, "iat": t,
                               "exp": t + 290, "jti": secrets.token_urlsafe(12)},
                              keys[client_id])

        def issue(form: dict[str, str], headers: dict[str, str] | None = None,
                  resources: list[str] | None = None) -> dict[str, Any]:
            with svc.sessions() as session:
                result = svc.tokens.token(session, form, resources or [], RequestContext(),
                                          method="POST", url=endpoint, headers=headers or {})
                session.commit()
                return result.body

        def timed(forms: list[tuple[dict[str, str], dict[str, str], list[str]]]) -> float:
            start = time.perf_counter()
            for form, headers, resources in forms:
                issue(form, headers, resources)
            return len(forms) / (time.perf_counter() - start)

        dpop_key = ECKey.generate_key("P-256", private=True)

        def cc_form(dpop: bool) -> tuple[dict[str, str], dict[str, str], list[str]]:
            headers = {"dpop": dpop_proof(dpop_key, "POST", endpoint, alg="ES256")} \
                if dpop else {}
            return ({"grant_type": "client_credentials", "client_assertion_type":
                     ASSERTION_TYPE, "client_assertion": assertion(agent.id)}, headers, [RS])

        subject_token = issue({"grant_type": "client_credentials", "client_assertion_type":
                               ASSERTION_TYPE, "client_assertion": assertion(user.id)}
                              )["access_token"]

        def exchange_form() -> tuple[dict[str, str], dict[str, str], list[str]]:
            return ({"grant_type": EXCHANGE, "subject_token": subject_token,
                     "subject_token_type": AT_TYPE, "client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": assertion(agent.id)}, {}, [RS])

        timed([cc_form(False) for _ in range(30)])  # warm caches
        bearer_rate = timed([cc_form(False) for _ in range(n)])
        dpop_rate = timed([cc_form(True) for _ in range(n)])
        exchange_rate = timed([exchange_form() for _ in range(n)])

        # SDK verify(): bearer and DPoP tokens for the resource server.
        verifier = Verifier("http://bench", RS)
        verifier.load_jwks(svc.keys.jwks())
        bearer = issue(*cc_form(False)[:1], resources=[RS])["access_token"]
        dpop_tok = issue(*cc_form(True)[:2], resources=[RS])["access_token"]
        t0 = time.perf_counter()
        for _ in range(n_verify):
            verifier.verify(f"Bearer {bearer}", method="GET", url=f"{RS}/x")
        bearer_verify = n_verify / (time.perf_counter() - t0)
        proofs = [dpop_proof(dpop_key, "GET", f"{RS}/x", alg="ES256", access_token=dpop_tok)
                  for _ in range(n_verify)]
        t0 = time.perf_counter()
        for p in proofs:
            verifier.verify(f"DPoP {dpop_tok}", method="GET", url=f"{RS}/x", dpop=p)
        dpop_verify = n_verify / (time.perf_counter() - t0)
        svc.close()

    sign, verify = raw["sign"], raw["verify"]
    print(f"issue 3 credentials benchmark: ES256, SQLite, audit on, one transaction per token, "
          f"in-process, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"  raw ES256 sign           {1 / sign:9.0f} /s  ({sign * 1e6:.0f} us)")
    print(f"  raw ES256 verify         {1 / verify:9.0f} /s  ({verify * 1e6:.0f} us)")
    rows = [("client_credentials (Bearer)", bearer_rate, sign + verify, "1 verify + 1 sign"),
            ("client_credentials + DPoP", dpop_rate, sign + 2 * verify, "2 verify + 1 sign"),
            ("token exchange", exchange_rate, sign + 2 * verify, "2 verify + 1 sign"),
            ("SDK verify() Bearer", bearer_verify, verify, "1 verify"),
            ("SDK verify() DPoP", dpop_verify, 2 * verify, "2 verify")]
    for name, rate, crypto, what in rows:
        print(f"  {name:26s} {rate:9.0f} /s  raw crypto it needs ({what}): "
              f"{1 / crypto:7.0f} /s  -> {crypto * rate * 100:5.1f}% of the time is crypto")


if __name__ == "__main__":
    main()

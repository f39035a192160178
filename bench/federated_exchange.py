"""Federated token exchange per second (RFC 7523 §2.1 jwt-bearer with a platform token).

In process, on SQLite: a loopback OIDC issuer signs Kubernetes-style tokens; Tessera verifies
each one (JWKS cached), maps its claims to an identity and issues an access token, committing
the audit event per request as the token endpoint does. Baseline in the same run:
client_credentials with private_key_jwt (the core path), same database, same loop.

    .venv/bin/python bench/federated_exchange.py [--n 300]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

from joserfc import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import LoopbackIssuer, installation, rate, register

from tessera.audit import RequestContext
from tessera.federation.schemas import IssuerCreate
from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    svc, _ = installation()
    svc.settings.federation.allow_insecure_http = True
    issuer = LoopbackIssuer()
    identity_id, key, kid = register(svc, "trainer")
    with svc.sessions() as s:
        svc.federation.add(s, IssuerCreate(name="k8s", issuer=issuer.url, audiences=["tessera"],
                                           rules=[{"match": {"sub": "system:serviceaccount:"
                                                             "ml:trainer"},
                                                   "identity": "pipeline/trainer"}]),
                           actor="bench")
        s.commit()
    platform_tokens = [issuer.token("system:serviceaccount:ml:trainer")
                       for _ in range(args.n + 5)]

    def federated() -> None:
        with svc.sessions() as s:
            svc.tokens.token(s, {"grant_type": GRANT_TYPE, "assertion": platform_tokens.pop()},
                             [], RequestContext())
            s.commit()

    def assertion() -> str:
        now = int(time.time())
        return jwt.encode({"alg": "ES256", "kid": kid}, {
            "iss": identity_id, "sub": identity_id, "aud": "http://tessera.bench/oauth2/token",
            "iat": now, "exp": now + 60, "jti": secrets.token_hex(8)}, key)

    assertions = [assertion() for _ in range(args.n + 5)]

    def client_credentials() -> None:
        with svc.sessions() as s:
            svc.tokens.token(s, {"grant_type": "client_credentials",
                                 "client_assertion_type":
                                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                 "client_assertion": assertions.pop()}, [], RequestContext())
            s.commit()

    fed = rate(federated, args.n)
    base = rate(client_credentials, args.n)
    issuer.close()
    print(f"federated jwt-bearer exchange : {fed:8.1f} tokens/s")
    print(f"baseline private_key_jwt      : {base:8.1f} tokens/s")
    print(f"ratio federated / baseline    : {fed / base:8.2f}")


if __name__ == "__main__":
    main()

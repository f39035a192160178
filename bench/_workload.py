"""Helpers for the issue-4 benchmarks: a throw-away installation, a loopback OIDC issuer,
SoftHSM2 token set-up, and a rate measurement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from joserfc import jwt
from joserfc.jwk import ECKey

from tessera.config import Settings
from tessera.container import Services, build
from tessera.db import make_engine, migrate
from tessera.db.meta import set_meta
from tessera.identity.schemas import CredentialCreate, IdentityCreate
from tessera.keys.software import SoftwareKeyProvider


def rate(fn: Callable[[], object], n: int) -> float:
    """Calls per second of fn over n calls (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def installation(provider: Any = None, **settings: Any) -> tuple[Services, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    url = f"sqlite:///{tmp / 'tessera.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    s = Settings(data_dir=tmp, database_url=url, issuer="http://tessera.bench",
                 master_key=Fernet.generate_key().decode(), **settings)
    svc = build(s, provider=provider or SoftwareKeyProvider(s.master_key.get_secret_value()
                                                            .encode()),
                trust_domain="bench.local")
    with svc.sessions() as session:
        set_meta(session, "trust_domain", "bench.local")
        svc.keys.create(session, "ES256")
        svc.ca.ensure(session)
        session.commit()
    return svc, tmp


def register(svc: Services, name: str, kind: str = "pipeline") -> tuple[str, ECKey, str]:
    key = ECKey.generate_key("P-256", private=True)
    with svc.sessions() as s:
        owner = svc.identities.register(s, IdentityCreate(name=f"owner-{name}", kind="human"),
                                        actor="bench")
        row = svc.identities.register(s, IdentityCreate(
            name=name, kind=kind, owner=owner.id, purpose="bench",
            expires_at=svc.clock.now() + timedelta(days=30)), actor="bench")
        cred = svc.identities.add_credential(s, row.id, CredentialCreate(
            jwk=key.as_dict(private=False)), actor="bench")
        s.commit()
        return row.id, key, cred.kid


class LoopbackIssuer:
    """A minimal OIDC issuer on 127.0.0.1 (discovery + JWKS) that signs its own tokens."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", private=True, parameters={"kid": "bench"})
        jwks = {"keys": [self.key.as_dict(private=False)]}
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"} \
                    if self.path.startswith("/.well-known") else jwks
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, sub: str) -> str:
        now = int(time.time())
        return jwt.encode({"alg": "ES256", "kid": "bench"},
                          {"iss": self.url, "sub": sub, "aud": "tessera", "iat": now,
                           "exp": now + 600}, self.key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def softhsm_token() -> tuple[str, str, str]:
    """Create a SoftHSM2 token in a temporary directory; returns (module, label, pin)."""
    util = shutil.which("softhsm2-util")
    module = next((m for m in ("/usr/lib/softhsm/libsofthsm2.so",
                               "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                   if os.path.exists(m)), None)
    if util is None or module is None:
        raise SystemExit("SoftHSM2 missing: run scripts/install-test-deps.sh")
    root = Path(tempfile.mkdtemp(prefix="tessera-softhsm-"))
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run([util, "--init-token", "--free", "--label", "bench", "--pin", "1234",
                    "--so-pin", "5678"], check=True, capture_output=True)
    return module, "bench", "1234"

"""A real OIDC issuer on loopback: discovery document, JWKS, and tokens it signs itself.

It runs as an HTTP server in a thread of the test process and is reached over TCP by the code
under test, like any platform issuer (Kubernetes API server, a CI provider).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tessera.container import Services


class OIDCIssuer:
    """Serves /.well-known/openid-configuration and /jwks; signs tokens with its own keys."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})
        self.extra_keys: list[Any] = []
        self.requests: list[str] = []
        self.redirect_to: str | None = None
        self.release = threading.Event()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: Any, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                issuer.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    self._json({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks",
                                "id_token_signing_alg_values_supported": ["RS256", "ES256"]})
                elif self.path == "/jwks":
                    self._json(issuer.jwks())
                elif self.path == "/same-host-redirect":
                    self.send_response(302)
                    self.send_header("Location", "/jwks")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/other-host-redirect":
                    self.send_response(302)
                    self.send_header("Location", issuer.redirect_to or "")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/big-jwks":
                    self._json({"keys": [], "padding": "x" * 200_000})
                elif self.path == "/hang":
                    # Accept the request, then never answer (until the test ends).
                    issuer.release.wait(60)
                else:
                    self._json({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def jwks(self) -> dict[str, Any]:
        keys = [self.key.as_dict(private=False)] + [k.as_dict(private=False)
                                                    for k in self.extra_keys]
        for k in keys:
            k.setdefault("use", "sig")
        return {"keys": keys}

    def token(self, key: Any = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.url, "sub": "system:serviceaccount:ml:trainer",
                                "aud": "tessera", "iat": now, "nbf": now, "exp": now + 600,
                                "jti": secrets.token_hex(8)}
        for name, value in claims.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        key = key or self.key
        alg = "RS256" if isinstance(key, RSAKey) else "ES256"
        return jwt.encode({"alg": alg, "kid": key.kid or "k1", **(header or {})}, body, key)

    def rotate(self) -> ECKey:
        """Add a new key to the JWKS (published from now on) and return it."""
        new = ECKey.generate_key("P-256", private=True, parameters={"kid": secrets.token_hex(4)})
        self.extra_keys.append(new)
        return new

    def __enter__(self) -> OIDCIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def oidc_issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as issuer:
        yield issuer


@pytest.fixture
def other_issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer() as issuer:
        yield issuer


@pytest.fixture
def fed_services(services: Services) -> Services:
    """Services whose federation may fetch http:// on loopback, with a short deadline."""
    fs = services.settings.federation
    fs.allow_insecure_http = True
    fs.fetch_timeout = 1.0
    return services

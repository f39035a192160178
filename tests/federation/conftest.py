"""A real OIDC issuer on loopback: discovery document, JWKS, and tokens it signs itself.

It runs as an HTTP server in a thread of the test process and is reached over TCP by the code
under test, like any platform issuer (Kubernetes API server, a CI provider).
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tessera.container import Services


class OIDCIssuer:
    """Serves /.well-known/openid-configuration and /jwks; signs tokens with its own keys."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.key = RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})
        self.extra_keys: list[Any] = []
        self.requests: list[str] = []
        self.redirect_to: str | None = None
        self.release = threading.Event()
        # Paths whose requests are accepted and never answered (until `release`, at most 60 s);
        # `hanging` is set once such a request has arrived.
        self.hang_paths: set[str] = set()
        self.hanging = threading.Event()
        # Called with the path before each answer (a test's slow server, or its clock).
        self.before_answer: Callable[[str], None] | None = None
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
                if self.path in issuer.hang_paths:
                    issuer.hanging.set()
                    issuer.release.wait(60)
                    return
                if issuer.before_answer is not None:
                    issuer.before_answer(self.path)
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
        scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
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
    # Short enough for the never-answering cases, long enough that a loopback fetch on a
    # loaded 2-core CI machine (the issuer is a thread of this process) never misses it.
    fs.fetch_timeout = 3.0
    return services


@pytest.fixture
def tls_issuer(tmp_path: Any) -> Iterator[tuple[OIDCIssuer, Any]]:
    """The same issuer over HTTPS, with a certificate from a private CA; yields the CA file."""
    import ipaddress
    from datetime import datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuer Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with OIDCIssuer(tls=ctx) as issuer:
        yield issuer, tmp_path / "ca.pem"

"""Two processes talk mutual TLS with certificates from Tessera.

Process 1 is `tessera serve` over HTTPS with its own certificate from the Tessera CA and client
certificates verified against that CA. Process 2 (this test) is a workload holding an SVID from
the same CA: it authenticates with `tls_client_auth`, receives a certificate-bound token, and uses
it over the same mutual-TLS channel. Foreign certificates and other certificates are refused.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from ca_helpers import foreign_ca_cert, key_pem, make_csr, new_key
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tessera.bootstrap import init
from tessera.config import Settings
from tessera.container import build
from tessera.identity.schemas import IdentityCreate
from tessera.sdk.mtls import (
    SVID,
    certificate_thumbprint,
    check_certificate_binding,
    client_context,
    peer_spiffe_id,
)

pytestmark = pytest.mark.slow
PORTS = range(18400, 18500)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 18400-18499")


def svid(cert_pem: str, key: Any, bundle: str) -> SVID:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return SVID(cert_pem=cert_pem, key_pem=key_pem(key), chain_pem="", bundle_pem=bundle,
                not_before=cert.not_valid_before_utc.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp())


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    init(settings, "example.org")
    subprocess.run([sys.executable, "-m", "tessera.cli.main", "ca", "server-cert",
                    "--data-dir", str(data), "--ip", "127.0.0.1"], check=True,
                   capture_output=True)
    svc = build(settings)
    try:
        with svc.sessions() as s:
            admin = svc.identities.get(s, "admin")
            worker = svc.identities.register(s, IdentityCreate(
                name="worker", kind="service", owner=admin.id, purpose="mTLS test",
                expires_at=svc.clock.now() + timedelta(days=1)), actor="test")
            certs = {}
            for label in ("worker", "worker-second"):
                key = new_key()
                issued = svc.ca.issue(s, worker.id, make_csr(key), actor="test")
                certs[label] = (issued.cert_pem, key)
            bundle = svc.ca.bundle_pem(s)
            s.commit()
    finally:
        svc.close()
    yield {"data": data, "worker_id": worker.id, "certs": certs, "bundle": bundle}


@pytest.fixture
def server(installation: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    tls = installation["data"] / "tls"
    env = {**os.environ, "TESSERA_DATA_DIR": str(installation["data"])}
    env.pop("TESSERA_ISSUER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera.cli.main", "serve", "--port", str(port),
         "--log-level", "warning", "--tls-cert", str(tls / "server.pem"),
         "--tls-key", str(tls / "server-key.pem")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    ctx = client_context(None, installation["bundle"])
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_processes_talk_mtls_with_tessera_certificates(installation: dict[str, Any],
                                                           server: str) -> None:
    bundle = installation["bundle"]
    worker_pem, worker_key = installation["certs"]["worker"]
    mine = svid(worker_pem, worker_key, bundle)
    ctx = client_context(mine, bundle)
    port = int(server.rsplit(":", 1)[1])
    # The server's certificate comes from the same CA and names Tessera's SPIFFE ID.
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw) as tls_sock:
        server_der = tls_sock.getpeercert(binary_form=True)
    assert server_der and peer_spiffe_id(server_der) == "spiffe://example.org/tessera/server"

    with httpx.Client(base_url=server, verify=ctx, timeout=10) as http:
        resp = http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                "client_id": installation["worker_id"]})
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        jwks = http.get("/oauth2/jwks").json()
        from joserfc import jwt
        from joserfc.jwk import KeySet

        claims = dict(jwt.decode(token, KeySet.import_key_set(jwks)).claims)
        assert claims["sub"] == installation["worker_id"]
        assert claims["iss"] == server
        assert claims["cnf"]["x5t#S256"] == certificate_thumbprint(mine.cert_der)
        check_certificate_binding(claims, mine.cert_der)
        # The bound token works over the channel that presents its certificate: renew.
        renewed = http.post("/v1/ca/certificates", headers={"Authorization": f"Bearer {token}"},
                            json={"csr": make_csr(new_key())})
        assert renewed.status_code == 201, renewed.text

    # The same token over a connection with another certificate of the same identity: refused.
    other_pem, other_key = installation["certs"]["worker-second"]
    other_ctx = client_context(svid(other_pem, other_key, bundle), bundle)
    with httpx.Client(base_url=server, verify=other_ctx, timeout=10) as http:
        resp = http.post("/v1/ca/certificates", headers={"Authorization": f"Bearer {token}"},
                         json={"csr": make_csr(new_key())})
    assert resp.status_code == 401


def test_client_certificate_from_foreign_ca_is_refused(installation: dict[str, Any],
                                                       server: str) -> None:
    key = new_key()
    cert = foreign_ca_cert("spiffe://example.org/service/worker", key)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    ctx = client_context(svid(pem, key, installation["bundle"]), installation["bundle"])
    with pytest.raises((httpx.HTTPError, ssl.SSLError)) as info:
        with httpx.Client(base_url=server, verify=ctx, timeout=10) as http:
            resp = http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                    "client_id": installation["worker_id"]})
            # Should the handshake ever pass, the token endpoint must still refuse it.
            assert resp.status_code == 401
            raise httpx.HTTPError("refused at the application layer")
    # The TLS layer itself refused it (an alert from the server), not the application.
    assert "refused at the application layer" not in str(info.value)

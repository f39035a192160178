"""Mutual TLS helpers for workloads: SVID renewal, mTLS contexts, certificate-bound tokens.

- `check_certificate_binding` — RFC 8705 §3: a resource server that receives a token with
  `cnf.x5t#S256` accepts it only over a connection presenting that very certificate.
- `CertificateRenewer` — keeps a short-lived X.509-SVID fresh: a new key and certificate once
  half of the current one's lifetime has passed.
- `client_context` / `server_context` — `ssl.SSLContext`s that trust the Tessera bundle and
  check the peer's SPIFFE ID instead of a DNS name.

Imports nothing from the Tessera server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "SVID",
    "CertificateBindingError",
    "CertificateRenewer",
    "certificate_thumbprint",
    "check_certificate_binding",
    "client_context",
    "new_csr",
    "peer_spiffe_id",
    "server_context",
]


class CertificateBindingError(Exception):
    """The token is bound to a certificate other than the one the connection presented."""


def certificate_thumbprint(cert_der: bytes) -> str:
    """RFC 8705 §3.1 `x5t#S256`: base64url(SHA-256(DER)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).rstrip(b"=").decode()


def check_certificate_binding(claims: dict[str, Any], cert_der: bytes | None, *,
                              require_binding: bool = False) -> None:
    """Raise unless the token's `cnf.x5t#S256` matches the presented certificate.

    Unbound tokens pass unless `require_binding`; a bound token over a connection without a
    client certificate, or with another one, never passes.
    """
    cnf = claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if bound is None:
        if require_binding:
            raise CertificateBindingError("the token is not certificate-bound")
        return
    if not isinstance(bound, str) or cert_der is None:
        raise CertificateBindingError("the token is bound to a certificate; none presented")
    import hmac

    if not hmac.compare_digest(bound, certificate_thumbprint(cert_der)):
        raise CertificateBindingError("the token is bound to another certificate")


def peer_spiffe_id(cert_der: bytes) -> str | None:
    """The single SPIFFE ID (URI SAN) of a certificate, or None."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else None


def new_csr(spiffe_id: str | None = None) -> tuple[str, str]:
    """A fresh EC P-256 key and a CSR for it: (csr_pem, key_pem). The key never leaves."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return csr, pem


@dataclass(frozen=True)
class SVID:
    cert_pem: str
    key_pem: str
    chain_pem: str
    bundle_pem: str
    not_before: float
    not_after: float

    @property
    def renew_at(self) -> float:
        """Half-way through the lifetime."""
        return self.not_before + (self.not_after - self.not_before) / 2

    @property
    def cert_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem.encode()).public_bytes(
            serialization.Encoding.DER)


class CertificateRenewer:
    """Holds the current SVID and replaces it once half its lifetime has passed.

    `request(csr_pem)` submits a CSR to Tessera (`POST /v1/ca/certificates`) and returns the
    JSON response; see `http_requester`.
    """

    def __init__(self, request: Callable[[str], dict[str, Any]],
                 now: Callable[[], float] = time.time) -> None:
        self._request = request
        self._now = now
        self._lock = threading.Lock()
        self._svid: SVID | None = None

    def needs_renewal(self) -> bool:
        return self._svid is None or self._now() >= self._svid.renew_at

    def current(self) -> SVID:
        with self._lock:
            svid = self._svid
            if svid is None or self._now() >= svid.renew_at:
                svid = self._svid = self._renew()
            return svid

    def _renew(self) -> SVID:
        csr, key = new_csr()
        body = self._request(csr)
        cert = x509.load_pem_x509_certificate(body["certificate"].encode())
        return SVID(cert_pem=body["certificate"], key_pem=key, chain_pem=body.get("chain", ""),
                    bundle_pem=body.get("bundle", ""),
                    not_before=cert.not_valid_before_utc.timestamp(),
                    not_after=cert.not_valid_after_utc.timestamp())


def http_requester(base_url: str, token: Callable[[], str],
                   verify: ssl.SSLContext | str | bool = True) -> Callable[[str], dict[str, Any]]:
    """A `CertificateRenewer` request function over HTTP with a bearer token."""
    import httpx

    def request(csr_pem: str) -> dict[str, Any]:
        resp = httpx.post(f"{base_url.rstrip('/')}/v1/ca/certificates", json={"csr": csr_pem},
                          headers={"Authorization": f"Bearer {token()}"}, verify=verify,
                          timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    return request


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    # ssl only loads files: write them into a private directory, load, remove.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "w") as f:
            f.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)


def client_context(svid: SVID | None, bundle_pem: str) -> ssl.SSLContext:
    """Client side: trust the Tessera bundle; present the SVID when given.

    SVIDs carry no DNS name, so hostname checking is off: check the server's SPIFFE ID with
    `peer_spiffe_id` on the connection instead.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    if svid is not None:
        _load_chain(ctx, svid.cert_pem + svid.chain_pem, svid.key_pem)
    return ctx


def server_context(svid: SVID, bundle_pem: str, *, require_client_cert: bool = True
                   ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=bundle_pem)
    _load_chain(ctx, svid.cert_pem + svid.chain_pem, svid.key_pem)
    return ctx

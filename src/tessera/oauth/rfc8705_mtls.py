"""OAuth 2.0 Mutual-TLS Client Authentication and Certificate-Bound Access Tokens — https://www.rfc-editor.org/rfc/rfc8705

Client authentication with a TLS client certificate (§2) and the `cnf` confirmation of
certificate-bound access tokens (§3). The certificate arrives as DER in `TokenRequest.client_cert`
after the TLS layer verified the handshake; it is verified again here against the CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tessera.ca.svid import x5t_s256
from tessera.oauth.ports import ClientKey
from tessera.oauth.rfc7523_client_assertion import AssertionRejected, AuthenticatedClient
from tessera.text import identifier

if TYPE_CHECKING:
    from tessera.ca import CAService
    from tessera.identity import IdentityService
    from tessera.oauth.service import TokenRequest

TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"


def certificate_expiry(cert_der: bytes) -> datetime:
    """The certificate's notAfter (UTC)."""
    return x509.load_der_x509_certificate(cert_der).not_valid_after_utc


def confirmation(cert_der: bytes) -> dict[str, str]:
    """§3.1: the `cnf` member binding a token to the certificate."""
    return {"x5t#S256": x5t_s256(cert_der)}


@dataclass
class _CertificateUse:
    """Stands in for a credential row so the caller can record its use (nothing is stored)."""

    kid: str
    last_used_at: datetime | None = None
    id: str | None = None  # no registered credential row behind a CA-issued certificate


def _jwk_thumbprint(public: Any) -> str | None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECKey.import_key(public).thumbprint()
    if isinstance(public, rsa.RSAPublicKey):
        return RSAKey.import_key(public).thumbprint()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(public).thumbprint()
    return None


class MutualTLSAuthenticator:
    """A `TokenService` client authenticator for `tls_client_auth` and
    `self_signed_tls_client_auth`; returns None when the request carries no certificate or
    uses another method (a client assertion)."""

    def __init__(self, ca: CAService, identities: IdentityService) -> None:
        self._ca = ca
        self._identities = identities

    def __call__(self, req: TokenRequest) -> AuthenticatedClient | None:
        if req.client_cert is None or "client_assertion" in req.form \
                or "client_assertion_type" in req.form:
            return None
        # §2: the client_id parameter identifies the client (RFC 6749 §2.2 form parameter).
        client_id = req.form.get("client_id")
        if not client_id:
            raise AssertionRejected("mutual TLS client authentication needs client_id")
        if not identifier(client_id):
            raise AssertionRejected("client_id is not a possible client id", client_id)
        try:
            cert = x509.load_der_x509_certificate(req.client_cert)
        except ValueError as exc:
            raise AssertionRejected("unreadable client certificate", client_id) from exc
        from tessera.oauth.service import SqlClients

        clients = SqlClients(req.session, self._identities)
        client = clients.find_client(client_id)
        if client is None or not client.usable:
            raise AssertionRejected("unknown or inactive client", client_id)
        thumb = x5t_s256(req.client_cert)
        if cert.issuer != cert.subject:
            # §2.1 PKI method: the certificate chains to our CA and names this client.
            try:
                identity_id = self._ca.identity_for_certificate(req.session, cert)
            except ValueError as exc:
                raise AssertionRejected(f"client certificate rejected: {exc}", client_id) from exc
            if identity_id != client.client_id:
                raise AssertionRejected("certificate names another client", client_id)
            # A key revoked after the certificate was issued ends it too, as it ends tokens
            # issued before it: a certificate must not outlive the compromise it followed.
            if self._identities.credential_revoked_since(req.session, identity_id,
                                                         cert.not_valid_before_utc):
                raise AssertionRejected("a credential was revoked after the certificate was "
                                        "issued", client_id)
            return AuthenticatedClient(client=client, key=ClientKey(
                kid=thumb, jwk={}, handle=_CertificateUse(thumb)), method=TLS_CLIENT_AUTH,
                claims={})
        # §2.2 self-signed method: the certificate's key is one the client registered.
        now = req.now
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AssertionRejected("client certificate outside its validity", client_id)
        try:
            cert.verify_directly_issued_by(cert)
        except Exception as exc:
            raise AssertionRejected("self-signed certificate does not verify", client_id) from exc
        jkt = _jwk_thumbprint(cert.public_key())
        for key in clients.client_keys(client, None):
            if jkt is not None and key.handle is not None and key.handle.thumbprint == jkt:
                return AuthenticatedClient(client=client, key=key,
                                           method=SELF_SIGNED_TLS_CLIENT_AUTH, claims={})
        raise AssertionRejected("certificate key is not registered for this client", client_id)

"""The built-in CA: root (and optional intermediate) kept by the KeyProvider, SVID issuance.

Certificates live one hour by default and never beyond the identity's expiry, so no CRL or OCSP
is published: suspending or decommissioning an identity stops issuance at once, and what was
already issued dies within its short lifetime.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.ca import svid
from tessera.ca.models import CACertificateRow, IssuedCertificateRow
from tessera.ca.x509_signing import sign_certificate
from tessera.clock import Clock, utc
from tessera.config import CASettings
from tessera.errors import Conflict, Forbidden, NotFound, ValidationFailed
from tessera.identity import IdentityService
from tessera.ids import new_id
from tessera.keys.ports import Signer
from tessera.keys.service import KeyService


@dataclass(frozen=True)
class IssuedSVID:
    serial: str
    identity_id: str
    spiffe_id: str
    cert_pem: str
    chain_pem: str  # intermediates, leaf excluded
    thumbprint: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class _Issuer:
    row_id: str
    cert: x509.Certificate
    signer: Signer
    chain_pem: str


class CAService:
    """Creates the CA, issues X.509-SVIDs from CSRs and publishes the trust bundle."""

    def __init__(self, clock: Clock, keys: KeyService, identities: IdentityService,
                 audit: AuditService, settings: CASettings) -> None:
        self._clock = clock
        self._keys = keys
        self._identities = identities
        self._audit = audit
        self.settings = settings
        self._lock = threading.Lock()
        self._issuer: _Issuer | None = None

    @property
    def trust_domain(self) -> str:
        return self._identities.rules.trust_domain

    # -- the CA itself ---------------------------------------------------------------------

    def _new_key(self, session: Session) -> tuple[str, Signer, ec.EllipticCurvePublicKey]:
        kid = self._keys.create(session, "ES256", purpose="ca")
        jwk = self._keys.public_jwk(session, kid)
        from joserfc.jwk import ECKey

        public = ECKey.import_key(jwk).public_key
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ValidationFailed("CA key is not an EC key")
        return kid, self._keys.signer_for(session, kid), public

    def ensure(self, session: Session, *, intermediate: bool | None = None) -> list[str]:
        """Create the root (and intermediate) when missing; returns what was created."""
        created: list[str] = []
        now = self._clock.now()
        want_intermediate = self.settings.intermediate if intermediate is None else intermediate
        root = session.scalars(select(CACertificateRow).where(
            CACertificateRow.kind == "root", CACertificateRow.status == "active")).first()
        if root is None:
            kid, signer, public = self._new_key(session)
            cert = sign_certificate(svid.root_template(
                self.trust_domain, public, now, self.settings.root_days,
                path_length=1 if want_intermediate else 0), signer, public)
            root = self._store(session, "root", kid, None, cert, now)
            created.append(f"CA root {root.id} (EC P-256, key {kid})")
        if want_intermediate and session.scalars(select(CACertificateRow).where(
                CACertificateRow.kind == "intermediate",
                CACertificateRow.status == "active")).first() is None:
            root_cert = x509.load_pem_x509_certificate(root.cert_pem.encode())
            kid, _signer, public = self._new_key(session)
            bc = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if bc.path_length == 0:
                raise Conflict("the root CA was created without room for an intermediate")
            cert = sign_certificate(svid.intermediate_template(
                self.trust_domain, public, root_cert, now, self.settings.intermediate_days),
                self._keys.signer_for(session, root.kid),
                root_cert.public_key())  # type: ignore[arg-type]
            row = self._store(session, "intermediate", kid, root.id, cert, now)
            created.append(f"CA intermediate {row.id} (key {kid})")
        self._issuer = None
        return created

    def _store(self, session: Session, kind: str, kid: str, parent: str | None,
               cert: x509.Certificate, now: datetime) -> CACertificateRow:
        row = CACertificateRow(id=new_id("cac", now), kind=kind, kid=kid, parent_id=parent,
                               serial=format(cert.serial_number, "x"),
                               cert_pem=svid.cert_pem(cert), status="active",
                               not_before=cert.not_valid_before_utc,
                               not_after=cert.not_valid_after_utc, created_at=now)
        session.add(row)
        session.flush()
        self._audit.record(session, ev.CA_CREATED, actor="system", resource=f"ca:{row.id}",
                           data={"kind": kind, "kid": kid, "serial": row.serial,
                                 "not_after": row.not_after.isoformat()})
        return row

    def _active(self, session: Session) -> list[CACertificateRow]:
        return list(session.scalars(select(CACertificateRow).where(
            CACertificateRow.status == "active").order_by(CACertificateRow.created_at)))

    def _current_issuer(self, session: Session) -> _Issuer:
        cached = self._issuer
        if cached is not None and cached.cert.not_valid_after_utc > self._clock.now():
            return cached
        with self._lock:
            rows = self._active(session)
            if not rows:
                raise NotFound("no certificate authority; run `tessera init` or `tessera ca "
                               "init`", code="ca_missing")
            leaf_ca = next((r for r in rows if r.kind == "intermediate"), rows[0])
            chain = leaf_ca.cert_pem if leaf_ca.kind == "intermediate" else ""
            cert = x509.load_pem_x509_certificate(leaf_ca.cert_pem.encode())
            self._issuer = _Issuer(leaf_ca.id, cert, self._keys.signer_for(session, leaf_ca.kid),
                                   chain)
            return self._issuer

    def roots(self, session: Session) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(r.cert_pem.encode())
                for r in self._active(session) if r.kind == "root"]

    def intermediates(self, session: Session) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(r.cert_pem.encode())
                for r in self._active(session) if r.kind == "intermediate"]

    def bundle_pem(self, session: Session) -> str:
        """The trust bundle: every active root certificate, PEM."""
        return "".join(svid.cert_pem(c) for c in self.roots(session))

    def spiffe_bundle(self, session: Session) -> dict[str, Any]:
        """SPIFFE bundle format (SPIFFE Trust Domain and Bundle §4): a JWK set of roots."""
        from joserfc.jwk import ECKey

        keys = []
        for cert in self.roots(session):
            jwk = ECKey.import_key(cert.public_key()).as_dict(private=False)  # type: ignore[arg-type]
            # RFC 7517 §4.7: x5c holds base64 (not base64url) DER.
            jwk.update({"use": "x509-svid",
                        "x5c": [base64.b64encode(svid.cert_der(cert)).decode()]})
            keys.append(jwk)
        return {"keys": keys, "spiffe_refresh_hint": 300}

    # -- issuance --------------------------------------------------------------------------

    def issue(self, session: Session, identity_id: str, csr_pem: str, *, actor: str,
              ttl: int | None = None, ctx: RequestContext | None = None,
              not_after_cap: datetime | None = None) -> IssuedSVID:
        """Issue an X.509-SVID for an active identity from its CSR; audited. It never
        outlives the configured maximum, the identity, the issuing CA, nor `not_after_cap`
        (the expiry of the credential the request came with)."""
        row = self._identities.get(session, identity_id)
        if not self._identities.is_usable(row):
            self._refuse(session, row.id, actor, "identity is not active", ctx)
            raise Forbidden("the identity is not active; no certificate is issued",
                            code="identity_inactive")
        spiffe_id = self._identities.spiffe_id(row)
        try:
            public = svid.validate_csr(csr_pem, spiffe_id, {row.name})
        except svid.CSRRejected as exc:
            self._refuse(session, row.id, actor, str(exc), ctx)
            raise ValidationFailed(str(exc), code="csr_rejected") from exc
        if ttl is not None and not 60 <= ttl <= self.settings.max_svid_ttl:
            raise ValidationFailed(f"ttl must be between 60 and {self.settings.max_svid_ttl} s",
                                   code="ttl_out_of_range")
        issuer = self._current_issuer(session)
        now = self._clock.now()
        not_after = now + timedelta(seconds=min(ttl or self.settings.svid_ttl,
                                                self.settings.max_svid_ttl))
        if row.expires_at is not None:
            not_after = min(not_after, utc(row.expires_at))
        if not_after_cap is not None:
            not_after = min(not_after, not_after_cap)
        not_after = min(not_after, issuer.cert.not_valid_after_utc)
        cert = sign_certificate(svid.svid_template(
            public, spiffe_id, row.name, issuer.cert, now - svid.BACKDATE, not_after),
            issuer.signer, issuer.cert.public_key())  # type: ignore[arg-type]
        der = svid.cert_der(cert)
        issued = IssuedSVID(serial=format(cert.serial_number, "x"), identity_id=row.id,
                            spiffe_id=spiffe_id, cert_pem=svid.cert_pem(cert),
                            chain_pem=issuer.chain_pem, thumbprint=svid.x5t_s256(der),
                            not_before=cert.not_valid_before_utc,
                            not_after=cert.not_valid_after_utc)
        session.add(IssuedCertificateRow(
            serial=issued.serial, identity_id=row.id, spiffe_id=spiffe_id,
            thumbprint=issued.thumbprint, ca_id=issuer.row_id, cert_pem=issued.cert_pem,
            issued_by=actor, not_before=issued.not_before, not_after=issued.not_after,
            created_at=now))
        self._audit.record(session, ev.CA_CERT_ISSUED, actor=actor, subject=row.id, ctx=ctx,
                           resource=f"certificate:{issued.serial}",
                           data={"spiffe_id": spiffe_id, "x5t#S256": issued.thumbprint,
                                 "not_after": issued.not_after.isoformat()})
        return issued

    def issue_server_certificate(self, session: Session, public: svid.PublicKey, *,
                                 dns_names: list[str], ip_addresses: list[str],
                                 days: int = 7) -> tuple[str, str]:
        """Tessera's own TLS certificate (serverAuth and clientAuth): SPIFFE ID
        `spiffe://<trust domain>/tessera/server` plus the DNS names and addresses clients dial.
        Returns (certificate PEM, chain PEM)."""
        import ipaddress

        if not 1 <= days <= 90:
            raise ValidationFailed("server certificates live 1 to 90 days")
        issuer = self._current_issuer(session)
        now = self._clock.now()
        spiffe_id = f"spiffe://{self.trust_domain}/tessera/server"
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [x509.DNSName(d) for d in dns_names]
        try:
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        except ValueError as exc:
            raise ValidationFailed("not an IP address") from exc
        not_after = min(now + timedelta(days=days), issuer.cert.not_valid_after_utc)
        builder = svid.svid_template(svid.check_public_key(public), spiffe_id, "tessera",
                                     issuer.cert, now - svid.BACKDATE, not_after,
                                     extra_names=names[1:])
        cert = sign_certificate(builder, issuer.signer,
                                issuer.cert.public_key())  # type: ignore[arg-type]
        self._audit.record(session, ev.CA_CERT_ISSUED, actor="system",
                           resource=f"certificate:{cert.serial_number:x}",
                           data={"spiffe_id": spiffe_id, "server": True,
                                 "dns": dns_names, "ip": ip_addresses,
                                 "not_after": cert.not_valid_after_utc.isoformat()})
        return svid.cert_pem(cert), issuer.chain_pem

    def _refuse(self, session: Session, identity_id: str, actor: str, reason: str,
                ctx: RequestContext | None) -> None:
        # Recorded in the caller's transaction; the router commits refusals too.
        self._audit.record(session, ev.CA_CERT_REFUSED, outcome="failure", actor=actor,
                           subject=identity_id, ctx=ctx, reasons=[reason])

    def issued(self, session: Session, identity_id: str,
               limit: int = 100) -> list[IssuedCertificateRow]:
        row = self._identities.get(session, identity_id)
        return list(session.scalars(select(IssuedCertificateRow).where(
            IssuedCertificateRow.identity_id == row.id).order_by(
            IssuedCertificateRow.created_at.desc()).limit(limit)))

    def identity_for_certificate(self, session: Session, cert: x509.Certificate) -> str:
        """Verify a client certificate against this CA; return the identity id it names.

        Raises ValueError (no detail for clients) when it does not chain, is expired, carries
        no single SPIFFE ID of this trust domain, or names an unknown identity.
        """
        svid.verify_chain(cert, self.intermediates(session), self.roots(session),
                          self._clock.now())
        ids = svid.spiffe_ids(cert)
        if len(ids) != 1:
            raise ValueError("certificate must carry exactly one SPIFFE ID")
        prefix = f"spiffe://{self.trust_domain}/"
        if not ids[0].startswith(prefix):
            raise ValueError("foreign trust domain")
        kind, _, name = ids[0][len(prefix):].partition("/")
        try:
            row = self._identities.get(session, name)
        except NotFound as exc:
            raise ValueError("no such identity") from exc
        if row.name != name or row.kind != kind:
            raise ValueError("no such identity")
        return row.id

"""Tables of the certificate authority: its own certificates and the ones it issued."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class CACertificateRow(Base):
    """A root or intermediate CA certificate; its private key is a `signing_keys` row."""

    __tablename__ = "ca_certificates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # root | intermediate
    kid: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(String(40))
    serial: Mapped[str] = mapped_column(String(64))
    cert_pem: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | retired
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]


class IssuedCertificateRow(Base):
    """An X.509-SVID issued to an identity (public data only)."""

    __tablename__ = "issued_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    spiffe_id: Mapped[str] = mapped_column(String(300))
    thumbprint: Mapped[str] = mapped_column(String(64), index=True)  # x5t#S256
    ca_id: Mapped[str] = mapped_column(String(40))
    cert_pem: Mapped[str] = mapped_column(Text)
    issued_by: Mapped[str | None] = mapped_column(String(40))
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]

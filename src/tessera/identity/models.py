"""Tables of the identity registry: identities, their credentials and their grants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class IdentityRow(Base):
    __tablename__ = "identities"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("identities.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(1000), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True, default="active")
    allowed_scopes: Mapped[list[str]] = mapped_column(default=list)
    allowed_audiences: Mapped[list[str]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    status_changed_at: Mapped[datetime | None]
    status_changed_by: Mapped[str | None] = mapped_column(String(40))
    status_reason: Mapped[str | None] = mapped_column(String(1000))
    # When it was last suspended: tokens issued before stay dead after a resume.
    suspended_at: Mapped[datetime | None]
    # Per-identity token lifetime, DPoP, delegation rules (migration 0003_oauth).
    token_ttl: Mapped[int | None] = mapped_column(Integer, default=None)
    dpop_required: Mapped[bool] = mapped_column(Boolean, default=False)
    may_act_for: Mapped[list[str]] = mapped_column(default=list)
    # Migration 0008: bumped by database triggers on every change but the usage stamps; the
    # validator of per-node cached client views (tessera.oauth.deferred).
    rev: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class CredentialRow(Base):
    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("identity_id", "kid", name="uq_credentials_identity_kid"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    type: Mapped[str] = mapped_column(String(16), default="jwk")
    kid: Mapped[str] = mapped_column(String(200))
    thumbprint: Mapped[str] = mapped_column(String(64), index=True)
    public_jwk: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class KeyClaimRow(Base):
    """A public key, by its RFC 7638 thumbprint, belongs to the first identity that registered
    it, for good: a revoked key is not re-registrable on another identity either (whoever held
    it could otherwise sign as the new one, and the audit trail of the key would name two
    identities). The primary key is the rule: of two nodes racing to register one key, one
    insert loses (credentials keep their own thumbprint; rows registered before migration 0013
    may share one, and the first registration holds the claim)."""

    __tablename__ = "key_claims"

    thumbprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]


class GrantRow(Base):
    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_identity_role", "identity_id", "role"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"))
    role: Mapped[str] = mapped_column(String(128))
    granted_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]

"""Tables of dynamic secrets: admin connections, templates, leases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class SecretConnectionRow(Base):
    __tablename__ = "secret_connections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    engine: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]]
    # INVARIANT: the admin password is stored only sealed with the master key.
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SecretTemplateRow(Base):
    __tablename__ = "secret_templates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("secret_connections.id"), index=True)
    creation: Mapped[str] = mapped_column(Text)
    revocation: Mapped[str | None] = mapped_column(Text)
    default_ttl: Mapped[int] = mapped_column(Integer)
    max_ttl: Mapped[int] = mapped_column(Integer)
    allowed_roles: Mapped[list[str]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SecretLeaseRow(Base):
    __tablename__ = "secret_leases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("secret_templates.id"), index=True)
    engine: Mapped[str] = mapped_column(String(32))
    username: Mapped[str] = mapped_column(String(128), unique=True)
    # active -> revoking (revocation pending or retrying) -> revoked | expired
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    max_expires_at: Mapped[datetime]
    renewed_at: Mapped[datetime | None]
    revoke_requested_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(40))
    revoke_reason: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))

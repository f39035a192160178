"""OAuth state that must be shared by every node: single-use assertion identifiers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class UsedJTIRow(Base):
    """A `jti` seen once; a second insert of the same (issuer, jti) is a replay."""

    __tablename__ = "used_jtis"

    issuer: Mapped[str] = mapped_column(String(200), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


# -- refresh-token families, revoked access tokens (migration 0003_oauth) ------------

class TokenFamilyRow(Base):
    """One refresh-token lineage: a grant, its rotating refresh tokens and its access tokens."""

    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    grant_type: Mapped[str] = mapped_column(String(80))
    scope: Mapped[str | None] = mapped_column(String(2000))
    audience: Mapped[list[str]]
    act: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jkt: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(200))


class RefreshTokenRow(Base):
    """A refresh token, stored only as the SHA-256 of its value."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("token_families.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # active | used | revoked
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class FamilyAccessTokenRow(Base):
    """An access token issued inside a family, so a family revocation reaches it."""

    __tablename__ = "family_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("token_families.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RevokedTokenRow(Base):
    """A revoked, not yet expired access token `jti`; purged once it expires."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime]

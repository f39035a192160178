"""Trusted external issuers (workload identity federation)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class FederatedIssuerRow(Base):
    __tablename__ = "federated_issuers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    issuer: Mapped[str] = mapped_column(String(500), unique=True)
    jwks_uri: Mapped[str | None] = mapped_column(String(1000))
    static_jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    audiences: Mapped[list[str]] = mapped_column(default=list)
    rules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

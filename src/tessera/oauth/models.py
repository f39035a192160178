"""OAuth state that must be shared by every node: single-use assertion identifiers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class UsedJTIRow(Base):
    """A `jti` seen once; a second insert of the same (issuer, jti) is a replay."""

    __tablename__ = "used_jtis"

    issuer: Mapped[str] = mapped_column(String(200), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)

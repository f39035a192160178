"""The append-only audit table and its chain head."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Index, Integer, String, column
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


def actor_not_subject() -> ColumnElement[bool]:
    """The condition of the actor index: events whose actor is also their subject (every
    token an agent gets for itself) are found through the subject index, and are left out of
    the actor index so each such event costs one index insert fewer (migration 0009). A query
    by actor must state the condition for the index to serve it (`AuditService.search`)."""
    return column("actor").is_distinct_from(column("subject"))


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_actor", "actor",
                            sqlite_where=actor_not_subject(),
                            postgresql_where=actor_not_subject()),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    ts: Mapped[datetime] = mapped_column(index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str | None] = mapped_column(String(200))  # partial index, above
    subject: Mapped[str | None] = mapped_column(String(200), index=True)
    action: Mapped[str | None] = mapped_column(String(200))
    resource: Mapped[str | None] = mapped_column(String(400))
    outcome: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]]
    request_id: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(String(100))
    node_id: Mapped[str | None] = mapped_column(String(100))
    data: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """One row: the chain's last sequence number and hash, locked by each appender."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A signed statement of the chain head: a JWS over (seq, hash) by the server's key."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime]
    kid: Mapped[str] = mapped_column(String(100))
    jws: Mapped[str] = mapped_column(String(4000))


class AuditRetentionRow(Base):
    """One retention run: events up to `base_seq` (a checkpoint) were removed."""

    __tablename__ = "audit_retention"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime]
    actor: Mapped[str | None] = mapped_column(String(200))
    base_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    base_hash: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))

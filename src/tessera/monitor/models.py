"""Tables of the monitor: stream cursors, baselines, alerts, risk, responses, CAEP push."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base

BIG = BigInteger().with_variant(Integer, "sqlite")


class StreamCursorRow(Base):
    """How far one consumer of the audit stream has read (by sequence number), and which
    process consumes it until when (its lease; NULL when nobody has taken it yet)."""

    __tablename__ = "monitor_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BIG)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class BaselineRow(Base):
    """One identity's learned behaviour (a JSON document owned by `monitor.baseline`)."""

    __tablename__ = "monitor_baselines"

    identity_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class AlertRow(Base):
    __tablename__ = "monitor_alerts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ts: Mapped[datetime] = mapped_column(index=True)
    identity_id: Mapped[str] = mapped_column(String(200), index=True)
    detector: Mapped[str] = mapped_column(String(64))
    score: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(String(1000))
    event_seq: Mapped[int | None] = mapped_column(BIG)
    status: Mapped[str] = mapped_column(String(16), index=True)
    data: Mapped[dict[str, Any]]
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(200))


class RiskRow(Base):
    """Risk at `updated_at`; it decays from there (half-life in the monitor settings)."""

    __tablename__ = "monitor_risk"

    identity_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    score: Mapped[float]
    updated_at: Mapped[datetime]


class ResponseRow(Base):
    """An automatic response taken at a risk threshold, undoable by an administrator."""

    __tablename__ = "monitor_responses"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ts: Mapped[datetime]
    identity_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[int] = mapped_column(Integer)
    risk: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    data: Mapped[dict[str, Any]]
    undone_at: Mapped[datetime | None]
    undone_by: Mapped[str | None] = mapped_column(String(200))


class SubscriptionRow(Base):
    """A CAEP receiver: a webhook that gets Security Event Tokens pushed (RFC 8935)."""

    __tablename__ = "caep_subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(1000))
    events: Mapped[list[str]]
    audience: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(200))


class DeliveryRow(Base):
    """One SET for one subscriber: pending, delivered, or failed after every retry."""

    __tablename__ = "caep_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the SET's jti
    subscription_id: Mapped[str] = mapped_column(String(40), index=True)
    event_type: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(200))
    set_jws: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

"""Tables of just-in-time access: role definitions, access requests, action approvals,
decisions, and owner webhooks with their delivery outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class AccessRoleRow(Base):
    """A requestable role: cap on duration, approvers, and whether it is sensitive."""

    __tablename__ = "access_roles"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    max_duration: Mapped[int] = mapped_column(Integer)
    approver_role: Mapped[str | None] = mapped_column(String(128))
    owner_approves: Mapped[bool] = mapped_column(Boolean, default=True)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AccessRequestRow(Base):
    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    role: Mapped[str] = mapped_column(String(128))
    requested_by: Mapped[str] = mapped_column(String(40), index=True)
    justification: Mapped[str] = mapped_column(String(2000))
    duration: Mapped[int] = mapped_column(Integer)
    # pending -> approved | denied | withdrawn | expired | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    decide_by: Mapped[datetime] = mapped_column(index=True)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(1000))
    grant_id: Mapped[str | None] = mapped_column(String(40))
    grant_expires_at: Mapped[datetime | None]


class ActionApprovalRow(Base):
    """One high-impact action waiting for (or holding) a person's yes."""

    __tablename__ = "action_approvals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(200))
    resource: Mapped[str] = mapped_column(String(400))
    context: Mapped[dict[str, Any]]
    request_hash: Mapped[str] = mapped_column(String(64), index=True)
    summary: Mapped[str] = mapped_column(Text)
    approver_group: Mapped[str | None] = mapped_column(String(128))
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    requested_by: Mapped[str] = mapped_column(String(40))
    # pending -> approved -> used | expired; pending -> denied | expired | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    decide_by: Mapped[datetime] = mapped_column(index=True)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(1000))
    # INVARIANT: the approval reference is stored as its SHA-256; the sealed copy exists only
    # until the requester collects it once.
    ref_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ref_sealed: Mapped[str | None] = mapped_column(Text)
    ref_expires_at: Mapped[datetime | None]
    used_at: Mapped[datetime | None]


class DecisionRow(Base):
    """One approver's yes or no on an access request or an action approval."""

    __tablename__ = "access_decisions"
    __table_args__ = (UniqueConstraint("target_id", "approver_id",
                                       name="uq_access_decisions_target_approver"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(40), index=True)
    approver_id: Mapped[str] = mapped_column(String(40))
    decision: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime]


class WebhookRow(Base):
    """Where owners are told about requests: an HTTPS endpoint and its signing secret."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    owner_id: Mapped[str | None] = mapped_column(String(40), index=True)
    events: Mapped[list[str]]
    secret_sealed: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class WebhookDeliveryRow(Base):
    """The outbox: written in the transaction of the change, sent (and retried) by a job."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

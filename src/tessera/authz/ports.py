"""Plug-in points of the decision point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from tessera.audit import RequestContext


class RiskProvider(Protocol):
    """The current risk score (0-100) of a principal; must answer from memory, fast.

    A provider whose memory can go stale may also have `needs_io(principal_id) -> bool`:
    whether `score` would read the database now. Decisions answered on an event loop ask it
    first and move to a worker thread when it says True."""

    def score(self, principal_id: str) -> int: ...


class NoRisk:
    """The default provider: every principal scores 0."""

    def score(self, principal_id: str) -> int:
        return 0


@dataclass(frozen=True)
class ApprovalBinding:
    """The exact request an `@approval` obligation asks a person to approve: the principal's
    id, the action name, the resource as `Type::"id"`, the context values the applicable
    policies look at, and the approver group the obligation names."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any]
    group: str

    def request(self) -> dict[str, Any]:
        """The body the agent opens its approval with (`POST /v1/approvals`)."""
        return {"principal": self.principal, "action": self.action,
                "resource": self.resource, "context": dict(self.context), "group": self.group}


class ApprovalRedeemer(Protocol):
    """Accepts an approval reference for exactly `binding`, once.

    Returns None when accepted (the reference is spent), else a client-safe refusal code.
    Joins the caller's transaction; records its own audit events."""

    def __call__(self, session: Session, reference: str, binding: ApprovalBinding, *,
                 actor: str | None, ctx: RequestContext | None) -> str | None: ...


class ApprovalGate(Protocol):
    """Whether every permit for `principal_id` must first be approved by a person: returns
    the approver group to ask (e.g. "owner"), or None. Joins the caller's transaction; with
    no session (a decision answered from memory) it reads on its own.

    A gate may also offer `needs_io() -> bool` and `refresh()` (a per-node cache): the
    decision point then answers from memory whenever `needs_io()` is False."""

    def __call__(self, session: Session | None, principal_id: str) -> str | None: ...

"""Action approvals: a person's yes for one exact high-impact request, usable once.

Flow: the policy denies with an `@approval("group")` obligation; the agent (or its PEP) opens an
approval bound to the SHA-256 of the request (principal, action, resource and the context values
the policy looked at). Approvers see a readable summary. On approval a `tsr_ap_` reference is
minted: stored as its hash, plus a sealed copy the requester collects once (long-poll `wait`).
Presented with the same request, it is accepted once, within `approval_ref_ttl`.

Who may say yes is judged when the yes is given (`approve`: outside the approval's group is
refused, 403, audited) and again whenever it is relied on: an approval completes, and its
reference is accepted, only while enough of the approvers who said yes are still eligible
(active, in the group, not the principal or requester). A yes from someone who has since left
the group, or been suspended, no longer counts: the reference is refused
(`approver_not_eligible`) and a new approval must be asked for.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import event, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from tessera.access.models import ActionApprovalRow
from tessera.access.ports import ActionRequest, ApproverPolicy, ApproverSet, Subject
from tessera.access.schemas import ApprovalRead
from tessera.access.service import Approvers
from tessera.access.webhooks import WebhookService
from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.config import AccessSettings
from tessera.errors import Conflict, NotFound, Refused
from tessera.identity import ADMIN_ROLE, IdentityService
from tessera.ids import new_id
from tessera.sealing import SecretBox, sha256_hex

REF_PREFIX = "tsr_ap_"
NOTIFY_KEY = "tessera.approvals.changed"
MAX_WAIT = 60.0


class Signals:
    """In-process wake-ups for long-polls; other nodes' changes are seen by polling."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version: dict[str, int] = {}

    def version(self, key: str) -> int:
        with self._cond:
            return self._version.get(key, 0)

    def fire(self, key: str) -> None:
        with self._cond:
            self._version[key] = self._version.get(key, 0) + 1
            self._cond.notify_all()

    def wait(self, key: str, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._version.get(key, 0) != seen, timeout)


class ApprovalService:
    """Open, decide, collect and use action approvals."""

    def __init__(self, clock: Clock, audit: AuditService, identities: IdentityService,
                 policy: ApproverPolicy, webhooks: WebhookService, box: SecretBox,
                 settings: AccessSettings, sessions: sessionmaker[Session],
                 poll_interval: float = 2.0) -> None:
        self._clock = clock
        self._audit = audit
        self._identities = identities
        self.policy = policy
        self._webhooks = webhooks
        self._box = box
        self.settings = settings
        self._sessions = sessions
        self.poll_interval = poll_interval
        self.approvers = Approvers(identities, audit)
        self.signals = Signals()
        # Waiters wake when a transaction that changed an approval commits.
        event.listen(sessions, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        for approval_id in session.info.pop(NOTIFY_KEY, set()):
            self.signals.fire(approval_id)

    def _changed(self, session: Session, row: ActionApprovalRow) -> None:
        session.info.setdefault(NOTIFY_KEY, set()).add(row.id)

    # -- representation ---------------------------------------------------------------------

    def _subject(self, session: Session, principal: str) -> Subject | None:
        row = self._identities.find(session, principal)
        return Subject(row.id, row.owner_id) if row else None

    def approver_set(self, session: Session, row: ActionApprovalRow) -> ApproverSet:
        request = ActionRequest(row.principal, row.action, row.resource, row.context)
        return self.policy.for_action(request, self._subject(session, row.principal),
                                      row.requested_by, row.approver_group,
                                      row.approvals_required)

    def read(self, session: Session, row: ActionApprovalRow,
             reference: str | None = None) -> ApprovalRead:
        return ApprovalRead(
            id=row.id, principal=row.principal, action=row.action, resource=row.resource,
            context=row.context, request_hash=row.request_hash, summary=row.summary,
            approvers=self.approver_set(session, row).describe(), status=row.status,
            requested_by=row.requested_by, created_at=row.created_at, decide_by=row.decide_by,
            decided_at=row.decided_at, decided_by=row.decided_by, reason=row.reason,
            reference_expires_at=row.ref_expires_at, approval_reference=reference)

    def summarise(self, session: Session, request: ActionRequest) -> str:
        """A sentence an approver can read: who, what, on what, with which values."""
        who = self._identities.find(session, request.principal)
        name = f"{who.name} ({who.kind}, {who.id})" if who else request.principal
        text = f"{name} asks to perform {request.action!r} on {request.resource!r}"
        if request.context:
            values = ", ".join(f"{k} = {json.dumps(v, ensure_ascii=False, default=str)}"
                               for k, v in sorted(request.context.items()))
            text += f" with {values}"
        return text + "."

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, session: Session, request: ActionRequest, *, requested_by: str,
             group: str | None = None, approvals_required: int = 1,
             summary: str | None = None, ctx: RequestContext | None = None) -> ActionApprovalRow:
        """Open an approval bound to `request`; only its principal or an admin (a PEP) may."""
        if requested_by != request.principal and not self._identities.has_role(
                session, requested_by, ADMIN_ROLE):
            self._audit.record(session, ev.APPROVAL_REQUESTED, outcome="failure",
                               actor=requested_by, subject=request.principal,
                               action=request.action, resource=request.resource, ctx=ctx,
                               reasons=["not_permitted"])
            raise Refused("only the principal itself or an admin may ask approval for it",
                          code="not_permitted")
        now = self._clock.now()
        auto = self.summarise(session, request)
        row = ActionApprovalRow(
            id=new_id("apr", now), principal=request.principal, action=request.action,
            resource=request.resource, context=json.loads(json.dumps(dict(request.context),
                                                                     default=str)),
            request_hash=request.digest(),
            summary=auto if not summary else f"{auto} Note from the requester: {summary}",
            approver_group=group, approvals_required=approvals_required,
            requested_by=requested_by, status="pending", created_at=now,
            decide_by=now + timedelta(seconds=self.settings.approval_ttl))
        session.add(row)
        session.flush()
        self._audit.record(session, ev.APPROVAL_REQUESTED, actor=requested_by,
                           subject=request.principal, action=request.action,
                           resource=request.resource, ctx=ctx,
                           data={"approval": row.id, "request_hash": row.request_hash,
                                 "group": group})
        self._notify(session, ev.APPROVAL_REQUESTED, row)
        return row

    def _notify(self, session: Session, event_type: str, row: ActionApprovalRow) -> None:
        subject = self._subject(session, row.principal)
        self._webhooks.enqueue(session, event_type, {
            "approval_id": row.id, "principal": row.principal, "action": row.action,
            "resource": row.resource, "summary": row.summary, "status": row.status},
            subject.owner_id if subject else None)

    def get(self, session: Session, approval_id: str) -> ActionApprovalRow:
        row = session.get(ActionApprovalRow, approval_id)
        if row is None:
            raise NotFound(f"approval {approval_id!r} not found")
        return row

    def list(self, session: Session, *, status: str | None = None,
             limit: int = 100) -> list[ActionApprovalRow]:
        q = select(ActionApprovalRow)
        if status:
            q = q.where(ActionApprovalRow.status == status)
        return list(session.scalars(q.order_by(ActionApprovalRow.id.desc()).limit(limit)))

    def _pending(self, session: Session, row: ActionApprovalRow) -> None:
        if row.status == "pending" and row.decide_by <= self._clock.now():
            self._expire(session, row)
        if row.status != "pending":
            raise Conflict(f"the approval is {row.status}", code="approval_not_pending")

    def approve(self, session: Session, approval_id: str, *, approver: str, comment: str = "",
                ctx: RequestContext | None = None) -> ActionApprovalRow:
        row = self.get(session, approval_id)
        self._pending(session, row)
        aset = self.approver_set(session, row)
        target = f"approval:{row.id}"
        self.approvers.check(session, approver, aset, target=target, ctx=ctx)
        now = self._clock.now()
        self.approvers.record(session, row.id, approver, "approve", comment, now)
        yes = self.approvers.standing_yes(session, row.id, aset)
        self._audit.record(session, ev.APPROVAL_APPROVAL_RECORDED, actor=approver,
                           subject=row.principal, resource=target, ctx=ctx,
                           data={"approvals": len(yes), "required": aset.required})
        if len(yes) < aset.required:
            return row
        reference = REF_PREFIX + secrets.token_urlsafe(32)
        row.status, row.decided_at, row.decided_by = "approved", now, approver
        row.ref_hash, row.ref_sealed = sha256_hex(reference), self._box.seal(reference)
        row.ref_expires_at = now + timedelta(seconds=self.settings.approval_ref_ttl)
        self._audit.record(session, ev.APPROVAL_GRANTED, actor=approver, subject=row.principal,
                           action=row.action, resource=row.resource, ctx=ctx,
                           data={"approval": row.id, "approvers": sorted(yes),
                                 "reference_expires_at": row.ref_expires_at.isoformat()})
        self._notify(session, ev.APPROVAL_GRANTED, row)
        self._changed(session, row)
        return row

    def deny(self, session: Session, approval_id: str, *, approver: str, comment: str = "",
             ctx: RequestContext | None = None) -> ActionApprovalRow:
        row = self.get(session, approval_id)
        self._pending(session, row)
        self.approvers.check(session, approver, self.approver_set(session, row),
                             target=f"approval:{row.id}", ctx=ctx)
        now = self._clock.now()
        self.approvers.record(session, row.id, approver, "deny", comment, now)
        row.status, row.decided_at, row.decided_by = "denied", now, approver
        row.reason = comment or None
        self._audit.record(session, ev.APPROVAL_DENIED, actor=approver, subject=row.principal,
                           action=row.action, resource=row.resource, ctx=ctx,
                           data={"approval": row.id}, reasons=[comment] if comment else [])
        self._notify(session, ev.APPROVAL_DENIED, row)
        self._changed(session, row)
        return row

    def collect(self, session: Session, row: ActionApprovalRow, *, actor: str,
                ctx: RequestContext | None = None) -> str | None:
        """Hand the approval reference to its requester, once; None if not (or no longer)
        available to this actor."""
        if row.status != "approved" or row.ref_sealed is None or \
                actor not in (row.principal, row.requested_by):
            return None
        reference = self._box.open(row.ref_sealed)
        row.ref_sealed = None
        self._audit.record(session, ev.APPROVAL_REFERENCE_COLLECTED, actor=actor,
                           subject=row.principal, resource=f"approval:{row.id}", ctx=ctx)
        return reference

    def wait(self, approval_id: str, *, actor: str, timeout: float,
             ctx: RequestContext | None = None) -> ApprovalRead:
        """Long-poll: return when the approval is decided (with the reference, once, for the
        requester) or when `timeout` seconds have passed (status still pending)."""
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_WAIT))
        while True:
            seen = self.signals.version(approval_id)
            with self._sessions() as session:
                row = self.get(session, approval_id)
                self._authorise_view(session, row, actor)
                if row.status == "pending" and row.decide_by <= self._clock.now():
                    self._expire(session, row)
                if row.status != "pending":
                    reference = self.collect(session, row, actor=actor, ctx=ctx)
                    view = self.read(session, row, reference)
                    session.commit()
                    return view
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.read(session, row)
            self.signals.wait(approval_id, seen, min(remaining, self.poll_interval))

    def _authorise_view(self, session: Session, row: ActionApprovalRow, actor: str) -> None:
        if actor in (row.principal, row.requested_by) or self._identities.has_role(
                session, actor, ADMIN_ROLE):
            return
        aset = self.approver_set(session, row)
        if actor in aset.identities or any(self._identities.has_role(session, actor, r)
                                           for r in aset.roles):
            return
        raise NotFound(f"approval {row.id!r} not found")

    def authorise_view(self, session: Session, row: ActionApprovalRow, actor: str) -> None:
        self._authorise_view(session, row, actor)

    def use(self, session: Session, reference: str, request: ActionRequest, *, actor: str | None,
            ctx: RequestContext | None = None, group: str | None = None) -> ActionApprovalRow:
        """Accept `reference` for exactly `request`, once. Every refusal is audited.

        `group`, when given (the decision point's `@approval` obligation), must be the group
        the approval was opened for: a yes from another group lifts nothing."""
        row = None
        if reference.startswith(REF_PREFIX):
            row = session.scalars(select(ActionApprovalRow).where(
                ActionApprovalRow.ref_hash == sha256_hex(reference))).one_or_none()
        now = self._clock.now()
        code: str | None = None
        if row is None:
            code = "unknown_reference"
        elif row.status == "used":
            code = "reference_already_used"
        elif row.status != "approved" or row.ref_expires_at is None or row.ref_expires_at <= now:
            code = "reference_expired"
        elif not hmac.compare_digest(row.request_hash, request.digest()):
            code = "request_mismatch"
        elif group is not None and row.approver_group != group:
            code = "wrong_approver_group"
        elif not self._vouched(session, row):
            # Judged again at use: a yes from someone no longer in the group lifts nothing.
            code = "approver_not_eligible"
        if code is None and row is not None:
            # INVARIANT: single use even under concurrent presentation: the conditional
            # update succeeds for exactly one transaction.
            done = session.execute(update(ActionApprovalRow).where(
                ActionApprovalRow.id == row.id, ActionApprovalRow.status == "approved")
                .values(status="used", used_at=now, ref_sealed=None))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                code = "reference_already_used"
        if code is not None or row is None:
            self._audit.record(session, ev.APPROVAL_REFERENCE_REFUSED, outcome="failure",
                               actor=actor, subject=request.principal, action=request.action,
                               resource=request.resource, ctx=ctx,
                               # (code is None only when row is, and no row is an unknown one)
                               reasons=[code or "unknown_reference"],
                               data={"approval": row.id if row else None})
            raise Refused("the approval reference is not valid for this request",
                          code="approval_invalid")
        session.refresh(row)
        self._audit.record(session, ev.APPROVAL_REFERENCE_USED, actor=actor,
                           subject=row.principal, action=row.action, resource=row.resource,
                           ctx=ctx, data={"approval": row.id})
        self._changed(session, row)
        return row

    def _vouched(self, session: Session, row: ActionApprovalRow) -> bool:
        aset = self.approver_set(session, row)
        return len(self.approvers.standing_yes(session, row.id, aset)) >= aset.required

    def _expire(self, session: Session, row: ActionApprovalRow) -> None:
        row.status, row.ref_sealed = "expired", None
        row.reason = row.reason or ("no decision before the deadline" if row.decided_at is None
                                    else "reference not used in time")
        self._audit.record(session, ev.APPROVAL_EXPIRED, subject=row.principal,
                           action=row.action, resource=row.resource,
                           data={"approval": row.id})
        self._notify(session, ev.APPROVAL_EXPIRED, row)
        self._changed(session, row)

    def expire_due(self, session: Session) -> int:
        """Job: undecided approvals past their deadline, and unused references past their
        lifetime, expire."""
        now = self._clock.now()
        rows = list(session.scalars(select(ActionApprovalRow).where(
            ((ActionApprovalRow.status == "pending") & (ActionApprovalRow.decide_by <= now)) |
            ((ActionApprovalRow.status == "approved") &
             (ActionApprovalRow.ref_expires_at <= now)))))
        for row in rows:
            self._expire(session, row)
        return len(rows)

    def cancel_for_identity(self, session: Session, identity_id: str, actor: str,
                            reason: str = "identity decommissioned") -> int:
        """Approvals for the identity's actions, or that it asked for, end (each audited):
        pending ones are cancelled, and an approved reference not yet used can no longer be."""
        rows = list(session.scalars(select(ActionApprovalRow).where(
            or_(ActionApprovalRow.principal == identity_id,
                ActionApprovalRow.requested_by == identity_id),
            ActionApprovalRow.status.in_(("pending", "approved")))))
        for row in rows:
            row.status, row.ref_sealed, row.reason = "cancelled", None, reason
            self._audit.record(session, ev.APPROVAL_CANCELLED, actor=actor or None,
                               subject=row.principal, resource=f"approval:{row.id}",
                               reasons=[reason])
            self._changed(session, row)
        return len(rows)


def request_from(data: Any) -> ActionRequest:
    """Build the bound request from an API body with principal/action/resource/context."""
    return ActionRequest(principal=data.principal, action=data.action, resource=data.resource,
                         context=dict(data.context))

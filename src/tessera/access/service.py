"""Just-in-time access: request a role for a while, have it approved, hold it, lose it.

Services never commit; API routers, the CLI and the jobs runner own the transaction. A refusal
that matters for security (self-approval, an approver outside the set, a duration above the
cap) is audited first and raised as `Refused`, and the caller commits the audit event.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tessera.access.models import AccessRequestRow, AccessRoleRow, DecisionRow
from tessera.access.ports import ApproverPolicy, ApproverSet, RoleDefinition, Subject
from tessera.access.schemas import AccessRequestCreate, AccessRequestRead, RoleDefine, RoleRead
from tessera.access.webhooks import WebhookService
from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.config import AccessSettings
from tessera.errors import Conflict, NotFound, Refused
from tessera.identity import ADMIN_ROLE, IdentityService
from tessera.ids import new_id

FINAL = ("approved", "denied", "withdrawn", "expired", "cancelled")


class Approvers:
    """Checks one approver against an approver set (shared by requests and actions)."""

    def __init__(self, identities: IdentityService, audit: AuditService) -> None:
        self._identities = identities
        self._audit = audit

    def check(self, session: Session, approver: str, aset: ApproverSet, *, target: str,
              ctx: RequestContext | None) -> None:
        if approver in aset.excluded:
            self._refuse(session, approver, target, ctx, "self_approval",
                         "nobody approves a request they made or that is about them")
        if not self.eligible(session, approver, aset):
            self._refuse(session, approver, target, ctx, "not_an_approver",
                         "you are not among the approvers of this request")

    def eligible(self, session: Session, approver: str, aset: ApproverSet) -> bool:
        """May `approver` decide now: usable, not excluded, named or holding a group role."""
        if approver in aset.excluded:
            return False
        row = self._identities.find(session, approver)
        return row is not None and self._identities.is_usable(row) and (
            approver in aset.identities or
            any(self._identities.has_role(session, approver, r) for r in aset.roles))

    def standing_yes(self, session: Session, target_id: str, aset: ApproverSet) -> set[str]:
        """The approvers whose yes still counts: each must be eligible now, not only when
        they said it (someone who left the group, or was suspended, no longer vouches)."""
        return {d.approver_id for d in self.tally(session, target_id)
                if d.decision == "approve" and self.eligible(session, d.approver_id, aset)}

    def _refuse(self, session: Session, approver: str, target: str,
                ctx: RequestContext | None, code: str, message: str) -> None:
        self._audit.record(session, ev.ACCESS_DECISION_REFUSED, outcome="failure",
                           actor=approver, resource=target, ctx=ctx, reasons=[code])
        raise Refused(message, code=code)

    @staticmethod
    def tally(session: Session, target_id: str) -> list[DecisionRow]:
        return list(session.scalars(select(DecisionRow).where(
            DecisionRow.target_id == target_id).order_by(DecisionRow.created_at)))

    @staticmethod
    def record(session: Session, target_id: str, approver: str, decision: str, comment: str,
               now: datetime) -> None:
        existing = session.scalars(select(DecisionRow).where(
            DecisionRow.target_id == target_id, DecisionRow.approver_id == approver)).first()
        if existing is not None:
            raise Conflict("you have already decided on this request", code="already_decided")
        session.add(DecisionRow(id=new_id("dec", now), target_id=target_id,
                                approver_id=approver, decision=decision, comment=comment,
                                created_at=now))
        session.flush()


class AccessService:
    """Role definitions and access requests, from request to time-bound grant."""

    def __init__(self, clock: Clock, audit: AuditService, identities: IdentityService,
                 policy: ApproverPolicy, webhooks: WebhookService,
                 settings: AccessSettings) -> None:
        self._clock = clock
        self._audit = audit
        self._identities = identities
        self.policy = policy
        self._webhooks = webhooks
        self.settings = settings
        self.approvers = Approvers(identities, audit)

    # -- role definitions -------------------------------------------------------------------

    @staticmethod
    def role_read(row: AccessRoleRow) -> RoleRead:
        return RoleRead(name=row.name, description=row.description,
                        max_duration=row.max_duration, approver_role=row.approver_role,
                        owner_approves=row.owner_approves,
                        approvals_required=row.approvals_required, sensitive=row.sensitive)

    @staticmethod
    def definition(row: AccessRoleRow) -> RoleDefinition:
        return RoleDefinition(name=row.name, max_duration=row.max_duration,
                              approver_role=row.approver_role, owner_approves=row.owner_approves,
                              approvals_required=row.approvals_required, sensitive=row.sensitive)

    def define_role(self, session: Session, data: RoleDefine, *, actor: str | None,
                    ctx: RequestContext | None = None) -> AccessRoleRow:
        now = self._clock.now()
        row = session.get(AccessRoleRow, data.name)
        fields = data.model_dump(exclude={"name"})
        if row is None:
            row = AccessRoleRow(name=data.name, created_at=now, updated_at=now, **fields)
            session.add(row)
        else:
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = now
        self._audit.record(session, ev.ACCESS_ROLE_DEFINED, actor=actor, ctx=ctx,
                           resource=f"role:{data.name}", data=data.model_dump())
        return row

    def role(self, session: Session, name: str) -> AccessRoleRow:
        row = session.get(AccessRoleRow, name)
        if row is None:
            raise NotFound(f"role {name!r} is not requestable (no role definition)")
        return row

    def roles(self, session: Session) -> list[AccessRoleRow]:
        return list(session.scalars(select(AccessRoleRow).order_by(AccessRoleRow.name)))

    # -- requests ---------------------------------------------------------------------------

    def approver_set(self, session: Session, req: AccessRequestRow) -> ApproverSet:
        identity = self._identities.get(session, req.identity_id)
        return self.policy.for_access_request(self.definition(self.role(session, req.role)),
                                              Subject(identity.id, identity.owner_id),
                                              req.requested_by)

    def read(self, session: Session, req: AccessRequestRow) -> AccessRequestRead:
        try:
            approvers = self.approver_set(session, req).describe()
        except NotFound:
            approvers = "role definition removed"
        return AccessRequestRead(
            id=req.id, identity_id=req.identity_id, role=req.role,
            requested_by=req.requested_by, justification=req.justification,
            duration=req.duration, status=req.status, created_at=req.created_at,
            decide_by=req.decide_by, decided_at=req.decided_at, decided_by=req.decided_by,
            reason=req.reason, grant_id=req.grant_id, grant_expires_at=req.grant_expires_at,
            approvals=[{"approver": d.approver_id, "decision": d.decision,
                        "comment": d.comment, "at": d.created_at.isoformat()}
                       for d in self.approvers.tally(session, req.id)],
            approvers=approvers)

    def _notify(self, session: Session, event: str, req: AccessRequestRow) -> None:
        identity = self._identities.find(session, req.identity_id)
        self._webhooks.enqueue(session, event, {
            "request_id": req.id, "identity": req.identity_id, "role": req.role,
            "status": req.status, "requested_by": req.requested_by,
            "justification": req.justification, "duration": req.duration,
            "grant_expires_at": req.grant_expires_at.isoformat() if req.grant_expires_at
            else None}, identity.owner_id if identity else None)

    def create(self, session: Session, data: AccessRequestCreate, *, requester: str,
               ctx: RequestContext | None = None) -> AccessRequestRow:
        """An identity (or its owner, or an admin) asks for a role for a while."""
        identity = self._identities.get(session, data.identity or requester)
        role = self.role(session, data.role)
        target = f"role:{role.name}"
        allowed = requester in (identity.id, identity.owner_id) or \
            self._identities.has_role(session, requester, ADMIN_ROLE)
        refusal: tuple[str, str, int] | None = None
        if not allowed:
            refusal = ("not_permitted", ("only the identity, its owner or an admin may ask "
                                         "for access on its behalf"), 403)
        elif not self._identities.is_usable(identity):
            refusal = ("identity_inactive", f"identity is {identity.status}", 403)
        elif data.duration > role.max_duration:
            refusal = ("duration_above_cap",
                       f"duration is above this role's cap of {role.max_duration} s", 422)
        if refusal:
            self._audit.record(session, ev.ACCESS_REQUEST_CREATED, outcome="failure",
                               actor=requester, subject=identity.id, resource=target, ctx=ctx,
                               reasons=[refusal[0]], data={"duration": data.duration})
            raise Refused(refusal[1], code=refusal[0], status=refusal[2])
        now = self._clock.now()
        req = AccessRequestRow(id=new_id("acr", now), identity_id=identity.id, role=role.name,
                               requested_by=requester, justification=data.justification,
                               duration=data.duration, status="pending", created_at=now,
                               decide_by=now + timedelta(seconds=self.settings.request_ttl))
        session.add(req)
        session.flush()
        self._audit.record(session, ev.ACCESS_REQUEST_CREATED, actor=requester,
                           subject=identity.id, resource=target, ctx=ctx,
                           data={"request": req.id, "duration": req.duration,
                                 "justification": req.justification})
        self._notify(session, ev.ACCESS_REQUEST_CREATED, req)
        return req

    def get(self, session: Session, request_id: str) -> AccessRequestRow:
        row = session.get(AccessRequestRow, request_id)
        if row is None:
            raise NotFound(f"access request {request_id!r} not found")
        return row

    def list(self, session: Session, *, viewer: str, status: str | None = None,
             identity: str | None = None, limit: int = 100) -> list[AccessRequestRow]:
        """Admins see every request; others see theirs, their identities', and what they
        may approve."""
        q = select(AccessRequestRow)
        if status:
            q = q.where(AccessRequestRow.status == status)
        if identity:
            q = q.where(AccessRequestRow.identity_id == identity)
        rows = list(session.scalars(q.order_by(AccessRequestRow.id.desc()).limit(limit * 4)))
        if not self._identities.has_role(session, viewer, ADMIN_ROLE):
            rows = [r for r in rows if self.visible(session, viewer, r)]
        return rows[:limit]

    def visible(self, session: Session, viewer: str, req: AccessRequestRow) -> bool:
        if viewer in (req.identity_id, req.requested_by):
            return True
        identity = self._identities.find(session, req.identity_id)
        if identity is not None and identity.owner_id == viewer:
            return True
        try:
            aset = self.approver_set(session, req)
        except NotFound:
            return False
        return viewer in aset.identities or any(
            self._identities.has_role(session, viewer, r) for r in aset.roles)

    def _pending(self, session: Session, req: AccessRequestRow) -> None:
        if req.status == "pending" and req.decide_by <= self._clock.now():
            self._expire(session, req)
        if req.status != "pending":
            raise Conflict(f"the request is {req.status}", code="request_not_pending")

    def approve(self, session: Session, request_id: str, *, approver: str, comment: str = "",
                ctx: RequestContext | None = None) -> AccessRequestRow:
        """Record one approval; with enough of them, grant the role until now + duration."""
        req = self.get(session, request_id)
        self._pending(session, req)
        aset = self.approver_set(session, req)
        self.approvers.check(session, approver, aset, target=f"access-request:{req.id}", ctx=ctx)
        now = self._clock.now()
        self.approvers.record(session, req.id, approver, "approve", comment, now)
        yes = self.approvers.standing_yes(session, req.id, aset)
        self._audit.record(session, ev.ACCESS_REQUEST_APPROVAL_RECORDED, actor=approver,
                           subject=req.identity_id, resource=f"access-request:{req.id}",
                           ctx=ctx, data={"approvals": len(yes), "required": aset.required})
        if len(yes) < aset.required:
            return req
        expires = now + timedelta(seconds=req.duration)
        grant = self._identities.grant_role(session, req.identity_id, req.role, actor=approver,
                                            expires_at=expires, ctx=ctx)
        req.status, req.decided_at, req.decided_by = "approved", now, approver
        req.grant_id, req.grant_expires_at = grant.id, expires
        self._audit.record(session, ev.ACCESS_REQUEST_APPROVED, actor=approver,
                           subject=req.identity_id, resource=f"role:{req.role}", ctx=ctx,
                           data={"request": req.id, "grant": grant.id,
                                 "approvers": sorted(yes), "expires_at": expires.isoformat()})
        self._notify(session, ev.ACCESS_REQUEST_APPROVED, req)
        return req

    def deny(self, session: Session, request_id: str, *, approver: str, comment: str = "",
             ctx: RequestContext | None = None) -> AccessRequestRow:
        req = self.get(session, request_id)
        self._pending(session, req)
        aset = self.approver_set(session, req)
        self.approvers.check(session, approver, aset, target=f"access-request:{req.id}", ctx=ctx)
        now = self._clock.now()
        self.approvers.record(session, req.id, approver, "deny", comment, now)
        req.status, req.decided_at, req.decided_by = "denied", now, approver
        req.reason = comment or None
        self._audit.record(session, ev.ACCESS_REQUEST_DENIED, actor=approver,
                           subject=req.identity_id, resource=f"role:{req.role}", ctx=ctx,
                           data={"request": req.id}, reasons=[comment] if comment else [])
        self._notify(session, ev.ACCESS_REQUEST_DENIED, req)
        return req

    def withdraw(self, session: Session, request_id: str, *, actor: str, reason: str = "",
                 ctx: RequestContext | None = None) -> AccessRequestRow:
        req = self.get(session, request_id)
        identity = self._identities.find(session, req.identity_id)
        if actor not in (req.identity_id, req.requested_by,
                         identity.owner_id if identity else None):
            raise Refused("only the requester, the identity or its owner may withdraw it",
                          code="not_permitted")
        self._pending(session, req)
        req.status, req.decided_at, req.decided_by = "withdrawn", self._clock.now(), actor
        req.reason = reason or None
        self._audit.record(session, ev.ACCESS_REQUEST_WITHDRAWN, actor=actor,
                           subject=req.identity_id, resource=f"role:{req.role}", ctx=ctx,
                           data={"request": req.id})
        self._notify(session, ev.ACCESS_REQUEST_WITHDRAWN, req)
        return req

    def _expire(self, session: Session, req: AccessRequestRow) -> None:
        req.status, req.decided_at = "expired", self._clock.now()
        req.reason = "no decision before the deadline"
        self._audit.record(session, ev.ACCESS_REQUEST_EXPIRED, subject=req.identity_id,
                           resource=f"role:{req.role}", data={"request": req.id})
        self._notify(session, ev.ACCESS_REQUEST_EXPIRED, req)

    def expire_undecided(self, session: Session) -> int:
        """Job: pending requests past their deadline become `expired`."""
        rows = list(session.scalars(select(AccessRequestRow).where(
            AccessRequestRow.status == "pending",
            AccessRequestRow.decide_by <= self._clock.now())))
        for req in rows:
            self._expire(session, req)
        return len(rows)

    def cancel_for_identity(self, session: Session, identity_id: str, actor: str,
                            reason: str = "identity decommissioned") -> int:
        """Pending requests about the identity, or that it made, are cancelled (each audited):
        the identity was suspended or decommissioned."""
        rows = list(session.scalars(select(AccessRequestRow).where(
            or_(AccessRequestRow.identity_id == identity_id,
                AccessRequestRow.requested_by == identity_id),
            AccessRequestRow.status == "pending")))
        now = self._clock.now()
        for req in rows:
            req.status, req.decided_at, req.decided_by = "cancelled", now, actor or None
            req.reason = reason
            self._audit.record(session, ev.ACCESS_REQUEST_CANCELLED, actor=actor or None,
                               subject=req.identity_id, resource=f"role:{req.role}",
                               reasons=[reason], data={"request": req.id})
        return len(rows)

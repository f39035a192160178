"""Dynamic secrets: short-lived accounts on other systems, each held by a lease.

Lease life: `issuing` while the target creates the account; `active` until it expires or is
revoked; `revoking` while the target still has to drop the account (suspension,
decommissioning, the end of the grant that allowed it, a failed issue, or a failed attempt the
jobs runner retries); then `expired` or `revoked`. Generated passwords are returned once and
never stored or logged.

INVARIANT: no database transaction of Tessera's is open while an engine talks to its target (a
slow or hung target must not stall other writers; on SQLite every transaction holds the write
lock). Operations that reach a target therefore commit the caller's session: they record the
intent, commit, call the target, then record the outcome in a new transaction the caller
commits. A crash between two steps leaves a lease `issuing` or `revoking`, which the jobs
runner ends; a lease row is `active` only once its account exists.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.config import SecretsSettings
from tessera.errors import AppError, Conflict, NotFound, Refused, ValidationFailed
from tessera.identity import IdentityService
from tessera.ids import new_id
from tessera.sealing import SecretBox
from tessera.secrets.models import SecretConnectionRow, SecretLeaseRow, SecretTemplateRow
from tessera.secrets.ports import (
    ConnectionSpec,
    EngineError,
    IssuePolicy,
    RoleIssuePolicy,
    SecretsEngine,
    TemplateSpec,
)
from tessera.secrets.postgres import PostgresEngine
from tessera.secrets.schemas import (
    ConnectionCreate,
    ConnectionRead,
    IssuedCredentials,
    LeaseRead,
    TemplateCreate,
    TemplateRead,
)

log = logging.getLogger("tessera.secrets")
MAX_USERNAME = 63
# The states in which a lease may hold (or be about to hold) an account on the target.
LIVE = ("issuing", "active")
# How long an `issuing` lease may wait for its outcome before the jobs runner treats the issue
# as abandoned (a crash between the intent and the result) and drops the account, if any.
# Longer than an engine call takes (PostgreSQL: its connect timeout plus the statements).
ISSUE_GRACE = timedelta(minutes=5)


class EngineUnavailable(AppError):
    status = 502
    code = "secrets_engine_error"


@dataclass
class Issue:
    lease: SecretLeaseRow
    credentials: IssuedCredentials = field(repr=False)


class SecretsService:
    """Configure connections and templates; issue, renew and revoke leases."""

    def __init__(self, clock: Clock, audit: AuditService, identities: IdentityService,
                 box: SecretBox, settings: SecretsSettings,
                 policy: IssuePolicy | None = None) -> None:
        self._clock = clock
        self._audit = audit
        self._identities = identities
        self._box = box
        self.settings = settings
        self.policy: IssuePolicy = policy or RoleIssuePolicy()
        self._engines: dict[str, SecretsEngine] = {}
        self.register_engine(PostgresEngine())

    def register_engine(self, engine: SecretsEngine) -> None:
        self._engines[engine.kind] = engine

    def engine(self, kind: str) -> SecretsEngine:
        try:
            return self._engines[kind]
        except KeyError:
            raise ValidationFailed(f"no secrets engine {kind!r} is installed") from None

    # -- representation ---------------------------------------------------------------------

    @staticmethod
    def connection_read(row: SecretConnectionRow) -> ConnectionRead:
        c = row.config
        return ConnectionRead(id=row.id, name=row.name, engine=row.engine, host=c.get("host", ""),
                              port=int(c.get("port", 0)), database=c.get("database", ""),
                              username=c.get("username", ""), sslmode=c.get("sslmode", ""),
                              created_at=row.created_at)

    def template_read(self, session: Session, row: SecretTemplateRow) -> TemplateRead:
        conn = session.get(SecretConnectionRow, row.connection_id)
        return TemplateRead(id=row.id, name=row.name, connection=conn.name if conn else "",
                            engine=conn.engine if conn else "", creation_sql=row.creation,
                            revocation_sql=row.revocation, default_ttl=row.default_ttl,
                            max_ttl=row.max_ttl, allowed_roles=row.allowed_roles,
                            created_at=row.created_at)

    def lease_read(self, session: Session, row: SecretLeaseRow) -> LeaseRead:
        tmpl = session.get(SecretTemplateRow, row.template_id)
        return LeaseRead(id=row.id, identity_id=row.identity_id,
                         template=tmpl.name if tmpl else "", engine=row.engine,
                         username=row.username, status=row.status, created_at=row.created_at,
                         expires_at=row.expires_at, max_expires_at=row.max_expires_at,
                         renewed_at=row.renewed_at, revoked_at=row.revoked_at,
                         revoke_reason=row.revoke_reason, last_error=row.last_error)

    # -- configuration ----------------------------------------------------------------------

    def _spec(self, row: SecretConnectionRow) -> ConnectionSpec:
        return ConnectionSpec(name=row.name, config=row.config,
                              secret=self._box.open(row.secret_sealed))

    @staticmethod
    def _tspec(row: SecretTemplateRow) -> TemplateSpec:
        return TemplateSpec(name=row.name, creation=row.creation, revocation=row.revocation)

    def configure_connection(self, session: Session, data: ConnectionCreate, *,
                             actor: str | None,
                             ctx: RequestContext | None = None) -> SecretConnectionRow:
        """Create or replace a named admin connection; the password is stored sealed. With
        `verify`, commits `session` before connecting to the target."""
        engine = self.engine(data.engine)
        config = {"host": data.host, "port": data.port, "database": data.database,
                  "username": data.username, "sslmode": data.sslmode}
        spec = ConnectionSpec(name=data.name, config=config,
                              secret=data.password.get_secret_value())
        if data.verify:
            session.commit()  # no transaction (SQLite: no write lock) while the target answers
            try:
                engine.check_connection(spec)
            except EngineError as exc:
                raise ValidationFailed(str(exc), code="connection_failed") from None
        now = self._clock.now()
        row = session.scalars(select(SecretConnectionRow).where(
            SecretConnectionRow.name == data.name)).one_or_none()
        sealed = self._box.seal(spec.secret)
        if row is None:
            row = SecretConnectionRow(id=new_id("sconn", now), name=data.name,
                                      engine=data.engine, config=config, secret_sealed=sealed,
                                      created_at=now, updated_at=now)
            session.add(row)
        else:
            row.engine, row.config, row.secret_sealed, row.updated_at = (data.engine, config,
                                                                         sealed, now)
        self._audit.record(session, ev.SECRETS_CONNECTION_CONFIGURED, actor=actor, ctx=ctx,
                           resource=f"secrets-connection:{row.name}",
                           data={"engine": data.engine, "host": data.host,
                                 "database": data.database, "username": data.username})
        return row

    def connection(self, session: Session, ref: str) -> SecretConnectionRow:
        row = session.get(SecretConnectionRow, ref) or session.scalars(select(
            SecretConnectionRow).where(SecretConnectionRow.name == ref)).one_or_none()
        if row is None:
            raise NotFound(f"secrets connection {ref!r} not found")
        return row

    def connections(self, session: Session) -> list[SecretConnectionRow]:
        return list(session.scalars(select(SecretConnectionRow).order_by(
            SecretConnectionRow.name)))

    def define_template(self, session: Session, data: TemplateCreate, *, actor: str | None,
                        ctx: RequestContext | None = None) -> SecretTemplateRow:
        """Create or replace a template; its TTLs are capped by the installation's maximum."""
        conn = self.connection(session, data.connection)
        spec = TemplateSpec(name=data.name, creation=data.creation_sql,
                            revocation=data.revocation_sql)
        try:
            self.engine(conn.engine).check_template(spec)
        except ValueError as exc:
            raise ValidationFailed(str(exc), code="invalid_template") from None
        max_ttl = data.max_ttl or self.settings.max_ttl
        default_ttl = data.default_ttl or min(self.settings.default_ttl, max_ttl)
        if max_ttl > self.settings.max_ttl:
            raise ValidationFailed(f"max_ttl is above the installation cap of "
                                   f"{self.settings.max_ttl} s", code="ttl_above_cap")
        if default_ttl > max_ttl:
            raise ValidationFailed("default_ttl is above max_ttl", code="ttl_above_cap")
        now = self._clock.now()
        row = session.scalars(select(SecretTemplateRow).where(
            SecretTemplateRow.name == data.name)).one_or_none()
        if row is None:
            row = SecretTemplateRow(id=new_id("stpl", now), name=data.name, created_at=now,
                                    connection_id=conn.id, creation=data.creation_sql,
                                    revocation=data.revocation_sql, default_ttl=default_ttl,
                                    max_ttl=max_ttl, allowed_roles=list(data.allowed_roles),
                                    updated_at=now)
            session.add(row)
        else:
            row.connection_id, row.creation, row.revocation = (conn.id, data.creation_sql,
                                                               data.revocation_sql)
            row.default_ttl, row.max_ttl, row.allowed_roles = (default_ttl, max_ttl,
                                                               list(data.allowed_roles))
            row.updated_at = now
        self._audit.record(session, ev.SECRETS_TEMPLATE_DEFINED, actor=actor, ctx=ctx,
                           resource=f"secrets-template:{row.name}",
                           data={"connection": conn.name, "default_ttl": default_ttl,
                                 "max_ttl": max_ttl, "allowed_roles": list(data.allowed_roles),
                                 "creation_sql": data.creation_sql})
        return row

    def template(self, session: Session, ref: str) -> SecretTemplateRow:
        row = session.get(SecretTemplateRow, ref) or session.scalars(select(
            SecretTemplateRow).where(SecretTemplateRow.name == ref)).one_or_none()
        if row is None:
            raise NotFound(f"secrets template {ref!r} not found")
        return row

    def templates(self, session: Session) -> list[SecretTemplateRow]:
        return list(session.scalars(select(SecretTemplateRow).order_by(SecretTemplateRow.name)))

    # -- leases -----------------------------------------------------------------------------

    def _username(self, template: str) -> str:
        slug = re.sub(r"[^a-z0-9_]", "_", template.lower())
        suffix = secrets.token_hex(5)
        room = MAX_USERNAME - len(self.settings.role_prefix) - len(suffix) - 2
        return f"{self.settings.role_prefix}_{slug[:room]}_{suffix}"

    def _refuse(self, session: Session, event: str, message: str, code: str, *,
                actor: str | None, subject: str | None, resource: str,
                ctx: RequestContext | None, status: int = 403) -> Refused:
        self._audit.record(session, event, outcome="failure", actor=actor, subject=subject,
                           resource=resource, ctx=ctx, reasons=[code])
        return Refused(message, code=code, status=status)

    def _grant_cap(self, session: Session, identity_id: str,
                   allowed_roles: list[str]) -> datetime | None:
        """When the grants that let the identity use the template end: the last moment
        `may_issue` still holds as its time-bound (JIT) grants run out; None when grants
        without an end suffice."""
        ends = self._identities.grant_ends(session, identity_id)
        if self.policy.may_issue([r for r, end in ends.items() if end is None], identity_id,
                                 allowed_roles):
            return None
        for moment in sorted({end for end in ends.values() if end is not None}, reverse=True):
            held = [r for r, end in ends.items() if end is None or end >= moment]
            if self.policy.may_issue(held, identity_id, allowed_roles):
                return moment
        return None  # not permitted at all: the caller has refused already

    def issue(self, session: Session, template_ref: str, identity_id: str, *,
              actor: str | None, ttl: int | None = None,
              ctx: RequestContext | None = None) -> Issue:
        """Create a fresh account for `identity_id` from a template, under a new lease.

        Commits `session` twice: the lease is recorded as `issuing` and committed before the
        target is contacted (no transaction is open while it answers); the outcome is then
        written in a new transaction the caller commits. A lease left `issuing` (a crash, a
        lost commit) is ended by the jobs runner after `ISSUE_GRACE`, dropping the account
        if it was created: the password of such an account never reached anyone."""
        tmpl = self.template(session, template_ref)
        identity = self._identities.get(session, identity_id)
        resource = f"secrets-template:{tmpl.name}"
        if not self._identities.is_usable(identity):
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               f"identity is {identity.status}; no credentials are issued",
                               "identity_inactive", actor=actor, subject=identity.id,
                               resource=resource, ctx=ctx)
        roles = self._identities.roles(session, identity.id)
        if not self.policy.may_issue(roles, identity.id, tmpl.allowed_roles):
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               "this identity may not obtain credentials from this template",
                               "not_permitted", actor=actor, subject=identity.id,
                               resource=resource, ctx=ctx)
        lifetime = ttl or tmpl.default_ttl
        if lifetime > tmpl.max_ttl:
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               f"ttl is above this template's cap of {tmpl.max_ttl} s",
                               "ttl_above_cap", actor=actor, subject=identity.id,
                               resource=resource, ctx=ctx, status=422)
        conn = session.get(SecretConnectionRow, tmpl.connection_id)
        if conn is None:
            raise NotFound("the template's connection no longer exists")
        now = self._clock.now()
        cap = now + timedelta(seconds=tmpl.max_ttl)
        # INVARIANT: a lease never outlives the grant that allowed it; renewals stop at
        # max_expires_at too.
        grant_end = self._grant_cap(session, identity.id, tmpl.allowed_roles)
        if grant_end is not None:
            cap = min(cap, grant_end)
        expires = min(now + timedelta(seconds=lifetime), cap)
        lease = SecretLeaseRow(id=new_id("lse", now), identity_id=identity.id,
                               template_id=tmpl.id, engine=conn.engine,
                               username=self._username(tmpl.name), status="issuing",
                               created_at=now, expires_at=expires, max_expires_at=cap,
                               attempts=0)
        session.add(lease)
        engine, spec, tspec = self.engine(conn.engine), self._spec(conn), self._tspec(tmpl)
        lease_id, username, cfg = lease.id, lease.username, dict(conn.config)
        subject = identity.id  # `identity_id` may be the name
        session.commit()
        try:
            issued = engine.create(spec, tspec, username, expires)
        except EngineError as exc:
            self._issue_failed(session, lease_id, str(exc), actor=actor, ctx=ctx)
            raise EngineUnavailable(str(exc)) from None
        row = self._locked(session, lease_id)
        if row is None or row.status != "issuing":
            # Ended meanwhile (suspension, or the job judged the issue abandoned): the account
            # just made must go as well, and nobody gets its password.
            self._abandon(session, lease_id, engine, spec, tspec, username)
            raise EngineUnavailable("the credentials were revoked while being issued")
        row.status = "active"
        # INVARIANT: the password goes into the response only; the audit event has none.
        self._audit.record(session, ev.SECRETS_LEASE_ISSUED, actor=actor, subject=subject,
                           resource=f"secrets-lease:{lease_id}", ctx=ctx,
                           data={"template": tspec.name, "username": username,
                                 "expires_at": expires.isoformat()})
        return Issue(row, IssuedCredentials(
            lease_id=lease_id, template=tspec.name, username=issued.username,
            password=issued.password, host=cfg.get("host"), port=cfg.get("port"),
            database=cfg.get("database"), expires_at=expires, max_expires_at=cap))

    @staticmethod
    def _locked(session: Session, lease_id: str) -> SecretLeaseRow | None:
        """The lease as stored now, locked for this transaction (SQLite: BEGIN IMMEDIATE)."""
        return session.get(SecretLeaseRow, lease_id, with_for_update=True,
                           populate_existing=True)

    def _issue_failed(self, session: Session, lease_id: str, error: str, *,
                      actor: str | None, ctx: RequestContext | None) -> None:
        """The target refused or was unreachable: the create may still have happened there
        (an answer lost), so the lease goes to `revoking` and the jobs runner makes sure."""
        row = self._locked(session, lease_id)
        if row is not None and row.status == "issuing":
            row.status, row.revoke_requested_at = "revoking", self._clock.now()
            row.revoked_by, row.revoke_reason = actor, "issue failed"
            row.last_error = error[:200]
        self._audit.record(session, ev.SECRETS_LEASE_ISSUE_FAILED, outcome="failure",
                           actor=actor, subject=row.identity_id if row else None,
                           resource=f"secrets-lease:{lease_id}", ctx=ctx,
                           reasons=[error[:200]])
        session.commit()

    def _abandon(self, session: Session, lease_id: str, engine: SecretsEngine,
                 spec: ConnectionSpec, tspec: TemplateSpec, username: str) -> None:
        session.commit()
        try:
            engine.revoke(spec, tspec, username)
        except EngineError as exc:
            # The account may outlive this call: hand the lease back to the job's retries.
            row = self._locked(session, lease_id)
            if row is not None:
                row.status, row.last_error = "revoking", str(exc)[:200]
                row.revoke_reason = row.revoke_reason or "issue abandoned"
            session.commit()

    def lease(self, session: Session, lease_id: str) -> SecretLeaseRow:
        row = session.get(SecretLeaseRow, lease_id)
        if row is None:
            raise NotFound(f"lease {lease_id!r} not found")
        return row

    def leases(self, session: Session, *, identity_id: str | None = None,
               status: str | None = None, limit: int = 100) -> list[SecretLeaseRow]:
        q = select(SecretLeaseRow)
        if identity_id:
            q = q.where(SecretLeaseRow.identity_id == identity_id)
        if status:
            q = q.where(SecretLeaseRow.status == status)
        return list(session.scalars(q.order_by(SecretLeaseRow.id.desc()).limit(limit)))

    def renew(self, session: Session, lease_id: str, *, actor: str | None,
              increment: int | None = None, ctx: RequestContext | None = None) -> SecretLeaseRow:
        """Extend a live lease to now + increment, never past its cap (nor past the grant that
        allowed it). Commits `session` before the target is contacted; the new expiry is
        recorded afterwards, in a transaction the caller commits."""
        lease = self.lease(session, lease_id)
        now = self._clock.now()
        resource = f"secrets-lease:{lease.id}"
        if lease.status != "active" or lease.expires_at <= now:
            raise Conflict("only a live lease can be renewed", code="lease_not_active")
        identity = self._identities.get(session, lease.identity_id)
        if not self._identities.is_usable(identity):
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               f"identity is {identity.status}; the lease is not renewed",
                               "identity_inactive", actor=actor, subject=identity.id,
                               resource=resource, ctx=ctx)
        tmpl = session.get(SecretTemplateRow, lease.template_id)
        conn = session.get(SecretConnectionRow, tmpl.connection_id) if tmpl else None
        if tmpl is None or conn is None:
            raise NotFound("the lease's template no longer exists")
        if not self.policy.may_issue(self._identities.roles(session, identity.id), identity.id,
                                     tmpl.allowed_roles):
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               "this identity no longer holds a role the template allows",
                               "not_permitted", actor=actor, subject=identity.id,
                               resource=resource, ctx=ctx)
        new_expiry = now + timedelta(seconds=increment or tmpl.default_ttl)
        if new_expiry > lease.max_expires_at:
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               "renewal would take the lease past its cap of "
                               f"{lease.max_expires_at.isoformat()}", "renewal_beyond_cap",
                               actor=actor, subject=identity.id, resource=resource, ctx=ctx,
                               status=422)
        engine, spec, tspec = self.engine(lease.engine), self._spec(conn), self._tspec(tmpl)
        username, subject = lease.username, identity.id
        session.commit()
        try:
            engine.renew(spec, tspec, username, new_expiry)
        except EngineError as exc:
            # Nothing recorded: the job drops the account at the expiry the lease still has.
            raise EngineUnavailable(str(exc)) from None
        row = self._locked(session, lease_id)
        if row is None or row.status != "active":
            raise Conflict("only a live lease can be renewed", code="lease_not_active")
        row.expires_at, row.renewed_at = new_expiry, now
        self._audit.record(session, ev.SECRETS_LEASE_RENEWED, actor=actor, subject=subject,
                           resource=resource, ctx=ctx,
                           data={"expires_at": new_expiry.isoformat()})
        return row

    def revoke(self, session: Session, lease_id: str, *, actor: str | None, reason: str = "",
               ctx: RequestContext | None = None) -> SecretLeaseRow:
        """Revoke now; when the target cannot be reached the jobs runner retries. Commits
        `session` (the lease is `revoking`) before the target is contacted."""
        lease = self.lease(session, lease_id)
        if lease.status in ("revoked", "expired"):
            return lease
        if lease.status != "revoking":
            lease.status, lease.revoke_requested_at = "revoking", self._clock.now()
            lease.revoked_by, lease.revoke_reason = actor, (reason or "revoked")[:200]
        self._finish(session, lease.id, final="revoked", ctx=ctx)
        return self.lease(session, lease_id)

    def _finish(self, session: Session, lease_id: str, *, final: str,
                ctx: RequestContext | None = None) -> bool:
        """Drop the account of a `revoking` lease: commit, ask the target, record the result
        (in a transaction the caller commits). Safe to run twice at once: the target's revoke
        is idempotent and only the first to record it writes the event."""
        lease = self.lease(session, lease_id)
        tmpl = session.get(SecretTemplateRow, lease.template_id)
        conn = session.get(SecretConnectionRow, tmpl.connection_id) if tmpl else None
        resource = f"secrets-lease:{lease.id}"
        error: str | None = None
        call = None
        try:
            if tmpl is None or conn is None:
                raise EngineError("the lease's template or connection no longer exists")
            call = (self.engine(lease.engine), self._spec(conn), self._tspec(tmpl),
                    lease.username)
        except (EngineError, ValidationFailed) as exc:
            error = str(exc)
        session.commit()
        if call is not None:
            engine, spec, tspec, username = call
            try:
                engine.revoke(spec, tspec, username)
            except EngineError as exc:
                error = str(exc)
        row = self._locked(session, lease_id)
        if row is None or row.status != "revoking":
            return False  # another node or call finished it meanwhile
        if error is not None:
            row.attempts += 1
            row.last_error = error[:200]
            self._audit.record(session, ev.SECRETS_LEASE_REVOKE_FAILED, outcome="failure",
                               actor=row.revoked_by, subject=row.identity_id,
                               resource=resource, ctx=ctx, reasons=[row.last_error],
                               data={"attempts": row.attempts})
            return False
        row.status, row.revoked_at, row.last_error = final, self._clock.now(), None
        self._audit.record(session, ev.SECRETS_LEASE_REVOKED, actor=row.revoked_by,
                           subject=row.identity_id, resource=resource, ctx=ctx,
                           data={"username": row.username, "status": final,
                                 "reason": row.revoke_reason or final})
        return True

    def revoke_for_identity(self, session: Session, identity_id: str, *, actor: str | None,
                            reason: str) -> int:
        """Mark every live lease of an identity for revocation (the jobs runner blocks the
        login, ends its sessions and drops the account); no target is contacted here, so it
        joins the caller's transaction."""
        rows = list(session.scalars(select(SecretLeaseRow).where(
            SecretLeaseRow.identity_id == identity_id,
            SecretLeaseRow.status.in_(LIVE))))
        return self._mark(rows, actor=actor, reason=reason)

    def revoke_unsupported(self, session: Session, identity_id: str, *, actor: str | None,
                           reason: str = "grant ended") -> int:
        """Mark for revocation the live leases of an identity whose template it may no longer
        use (a grant ended): a lease never outlives what allowed it."""
        roles = self._identities.roles(session, identity_id)
        rows = [lease for lease in session.scalars(select(SecretLeaseRow).where(
            SecretLeaseRow.identity_id == identity_id, SecretLeaseRow.status.in_(LIVE)))
            if not self._still_allowed(session, lease, roles)]
        return self._mark(rows, actor=actor, reason=reason)

    def _still_allowed(self, session: Session, lease: SecretLeaseRow, roles: list[str]) -> bool:
        tmpl = session.get(SecretTemplateRow, lease.template_id)
        return tmpl is not None and self.policy.may_issue(roles, lease.identity_id,
                                                          tmpl.allowed_roles)

    def _mark(self, rows: list[SecretLeaseRow], *, actor: str | None, reason: str) -> int:
        now = self._clock.now()
        for lease in rows:
            lease.status, lease.revoke_requested_at = "revoking", now
            lease.revoked_by, lease.revoke_reason = actor, reason[:200]
        return len(rows)

    def due(self, session: Session) -> list[str]:
        """Leases the jobs runner must end now: expired, waiting for revocation, or issues
        abandoned for longer than `ISSUE_GRACE`."""
        now = self._clock.now()
        return list(session.scalars(select(SecretLeaseRow.id).where(or_(
            (SecretLeaseRow.status == "active") & (SecretLeaseRow.expires_at <= now),
            (SecretLeaseRow.status == "issuing") &
            (SecretLeaseRow.created_at <= now - ISSUE_GRACE),
            SecretLeaseRow.status == "revoking")).order_by(SecretLeaseRow.expires_at)))

    def end_all_due(self, sessions: Callable[[], Session]) -> int:
        """The lease job: end every due lease, each in transactions of its own (target I/O
        happens between them, never inside one). Returns how many were due."""
        with sessions() as session:
            due = self.due(session)
        for lease_id in due:
            with sessions() as session:
                self.end_due(session, lease_id)
                session.commit()
        return len(due)

    def end_due(self, session: Session, lease_id: str) -> bool:
        """End one due lease (called by the job, one lease at a time). Commits `session`
        before the target is contacted; the caller commits the outcome."""
        lease = self._locked(session, lease_id)
        if lease is None or lease.status in ("revoked", "expired"):
            return False
        now = self._clock.now()
        if lease.status == "active":
            if lease.expires_at > now:
                return False
            lease.status, lease.revoke_reason = "revoking", "expired"
        elif lease.status == "issuing":
            if lease.created_at > now - ISSUE_GRACE:
                return False
            lease.status, lease.revoke_reason = "revoking", "issue not completed"
            lease.revoke_requested_at = now
        final = "expired" if lease.revoke_reason == "expired" else "revoked"
        return self._finish(session, lease.id, final=final)

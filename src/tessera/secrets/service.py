"""Dynamic secrets: short-lived accounts on other systems, each held by a lease.

Lease life: `active` until it expires or is revoked; `revoking` while the target still has to
drop the account (decommissioning, or a failed attempt the jobs runner retries); then `expired`
or `revoked`. Generated passwords are returned once and never stored or logged.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

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
        """Create or replace a named admin connection; the password is stored sealed."""
        engine = self.engine(data.engine)
        config = {"host": data.host, "port": data.port, "database": data.database,
                  "username": data.username, "sslmode": data.sslmode}
        spec = ConnectionSpec(name=data.name, config=config,
                              secret=data.password.get_secret_value())
        if data.verify:
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

    def issue(self, session: Session, template_ref: str, identity_id: str, *,
              actor: str | None, ttl: int | None = None,
              ctx: RequestContext | None = None) -> Issue:
        """Create a fresh account for `identity_id` from a template, under a new lease."""
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
        expires = now + timedelta(seconds=lifetime)
        lease = SecretLeaseRow(id=new_id("lse", now), identity_id=identity.id,
                               template_id=tmpl.id, engine=conn.engine,
                               username=self._username(tmpl.name), status="active",
                               created_at=now, expires_at=expires,
                               max_expires_at=now + timedelta(seconds=tmpl.max_ttl), attempts=0)
        session.add(lease)
        session.flush()
        try:
            issued = self.engine(conn.engine).create(self._spec(conn), self._tspec(tmpl),
                                                     lease.username, expires)
        except EngineError as exc:
            raise EngineUnavailable(str(exc)) from None
        # INVARIANT: the password goes into the response only; the audit event has none.
        self._audit.record(session, ev.SECRETS_LEASE_ISSUED, actor=actor, subject=identity.id,
                           resource=f"secrets-lease:{lease.id}", ctx=ctx,
                           data={"template": tmpl.name, "username": lease.username,
                                 "expires_at": expires.isoformat()})
        cfg = conn.config
        return Issue(lease, IssuedCredentials(
            lease_id=lease.id, template=tmpl.name, username=issued.username,
            password=issued.password, host=cfg.get("host"), port=cfg.get("port"),
            database=cfg.get("database"), expires_at=expires,
            max_expires_at=lease.max_expires_at))

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
        """Extend a live lease to now + increment, never past its cap."""
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
        new_expiry = now + timedelta(seconds=increment or tmpl.default_ttl)
        if new_expiry > lease.max_expires_at:
            raise self._refuse(session, ev.SECRETS_LEASE_REFUSED,
                               "renewal would take the lease past its cap of "
                               f"{lease.max_expires_at.isoformat()}", "renewal_beyond_cap",
                               actor=actor, subject=identity.id, resource=resource, ctx=ctx,
                               status=422)
        try:
            self.engine(lease.engine).renew(self._spec(conn), self._tspec(tmpl), lease.username,
                                            new_expiry)
        except EngineError as exc:
            raise EngineUnavailable(str(exc)) from None
        lease.expires_at, lease.renewed_at = new_expiry, now
        self._audit.record(session, ev.SECRETS_LEASE_RENEWED, actor=actor, subject=identity.id,
                           resource=resource, ctx=ctx,
                           data={"expires_at": new_expiry.isoformat()})
        return lease

    def revoke(self, session: Session, lease_id: str, *, actor: str | None, reason: str = "",
               ctx: RequestContext | None = None) -> SecretLeaseRow:
        """Revoke now; when the target cannot be reached the jobs runner retries."""
        lease = self.lease(session, lease_id)
        if lease.status in ("revoked", "expired"):
            return lease
        lease.status, lease.revoke_requested_at = "revoking", self._clock.now()
        lease.revoked_by, lease.revoke_reason = actor, (reason or "revoked")[:200]
        self._finish(session, lease, final="revoked", ctx=ctx)
        return lease

    def _finish(self, session: Session, lease: SecretLeaseRow, *, final: str,
                ctx: RequestContext | None = None) -> bool:
        tmpl = session.get(SecretTemplateRow, lease.template_id)
        conn = session.get(SecretConnectionRow, tmpl.connection_id) if tmpl else None
        resource = f"secrets-lease:{lease.id}"
        try:
            if tmpl is None or conn is None:
                raise EngineError("the lease's template or connection no longer exists")
            self.engine(lease.engine).revoke(self._spec(conn), self._tspec(tmpl), lease.username)
        except (EngineError, ValidationFailed) as exc:
            lease.attempts += 1
            lease.last_error = str(exc)[:200]
            self._audit.record(session, ev.SECRETS_LEASE_REVOKE_FAILED, outcome="failure",
                               actor=lease.revoked_by, subject=lease.identity_id,
                               resource=resource, ctx=ctx, reasons=[lease.last_error],
                               data={"attempts": lease.attempts})
            return False
        lease.status, lease.revoked_at, lease.last_error = final, self._clock.now(), None
        self._audit.record(session, ev.SECRETS_LEASE_REVOKED, actor=lease.revoked_by,
                           subject=lease.identity_id, resource=resource, ctx=ctx,
                           data={"username": lease.username, "status": final,
                                 "reason": lease.revoke_reason or final})
        return True

    def revoke_for_identity(self, session: Session, identity_id: str, *, actor: str | None,
                            reason: str) -> int:
        """Mark every live lease of an identity for revocation (the jobs runner drops them)."""
        now = self._clock.now()
        rows = list(session.scalars(select(SecretLeaseRow).where(
            SecretLeaseRow.identity_id == identity_id, SecretLeaseRow.status == "active")))
        for lease in rows:
            lease.status, lease.revoke_requested_at = "revoking", now
            lease.revoked_by, lease.revoke_reason = actor, reason[:200]
        return len(rows)

    def due(self, session: Session) -> list[str]:
        """Leases the jobs runner must end now: expired, or waiting for revocation."""
        now = self._clock.now()
        return list(session.scalars(select(SecretLeaseRow.id).where(or_(
            (SecretLeaseRow.status == "active") & (SecretLeaseRow.expires_at <= now),
            SecretLeaseRow.status == "revoking")).order_by(SecretLeaseRow.expires_at)))

    def end_due(self, session: Session, lease_id: str) -> bool:
        """End one due lease (called by the job, one transaction per lease)."""
        lease = session.get(SecretLeaseRow, lease_id)
        if lease is None or lease.status in ("revoked", "expired"):
            return False
        if lease.status == "active":
            if lease.expires_at > self._clock.now():
                return False
            lease.status, lease.revoke_reason = "revoking", "expired"
            return self._finish(session, lease, final="expired")
        final = "expired" if lease.revoke_reason == "expired" else "revoked"
        return self._finish(session, lease, final=final)

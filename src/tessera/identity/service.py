"""The identity registry: who every agent, model, pipeline, service and human is.

Services never commit; the caller (API, CLI, job) owns the transaction, and audit events join it.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.db.invalidation import USAGE_STAMP
from tessera.errors import Conflict, NotFound, ValidationFailed
from tessera.identity.jwk_policy import validate_public_jwk
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow, KeyClaimRow
from tessera.identity.schemas import (
    SCOPE_TOKEN,
    CredentialCreate,
    CredentialRead,
    IdentityCreate,
    IdentityRead,
    IdentityUpdate,
)
from tessera.ids import new_id
from tessera.text import identifier

ADMIN_ROLE = "admin"
MAX_ATTRIBUTES_BYTES = 16 * 1024
NAME_MAX = 128  # the longest id or name a lookup can match (identities.name)
DecommissionHook = Callable[[Session, IdentityRow, str], None]
# (session, identity, actor): the identity was suspended; it runs in the same transaction.
SuspensionHook = Callable[[Session, IdentityRow, str], None]
# (session, identity id, role, actor): a grant of that role ended (expired and purged, or ended
# early); it runs in the same transaction, after the grant is gone.
GrantEndedHook = Callable[[Session, str, str, str], None]
# Usage stamps (IdentityService.touch_statements), built once: they run on every token path.
_TOUCH_KEY = update(CredentialRow).where(CredentialRow.id == bindparam("row_id")) \
    .values(last_used_at=bindparam("now")).execution_options(**{USAGE_STAMP: True})
_TOUCH_IDENTITY = update(IdentityRow).where(IdentityRow.id == bindparam("row_id")) \
    .values(last_seen_at=bindparam("now")).execution_options(**{USAGE_STAMP: True})
# The token endpoint's read of a client: the identity and its active keys in one round trip.
_I, _C = IdentityRow.__table__.c, CredentialRow.__table__.c
_CLIENT_VIEW = (
    select(_I.id, _I.name, _I.kind, _I.status, _I.expires_at, _I.allowed_scopes,
           _I.allowed_audiences, _I.last_seen_at, _I.token_ttl, _I.dpop_required,
           _I.may_act_for, _I.rev, _C.id.label("cid"), _C.kid, _C.public_jwk, _C.thumbprint,
           _C.expires_at.label("cexp"), _C.last_used_at)
    .select_from(IdentityRow.__table__.outerjoin(
        CredentialRow.__table__, (_C.identity_id == _I.id) & (_C.status == "active")))
    .where(_I.id == bindparam("identity_id")))


@dataclass
class KeyView:
    id: str | None
    kid: str
    jwk: dict[str, Any]
    last_used_at: datetime | None
    thumbprint: str = ""
    expires_at: datetime | None = None


@dataclass
class ClientView:
    """What client authentication needs about an identity, read in one query."""

    id: str
    allowed_scopes: list[str]
    allowed_audiences: list[str]
    expires_at: datetime | None
    last_seen_at: datetime | None
    keys: list[KeyView]  # every active key; `keys_at` drops the expired ones
    kind: str = ""
    token_ttl: int | None = None
    dpop_required: bool = False
    may_act_for: list[str] = field(default_factory=list)
    spiffe_id: str = ""
    status: str = "active"
    # identities.rev when read: triggers bump it on every change (migration 0008), so a cached
    # view is current exactly while the stored rev still equals this one.
    rev: int = 0

    def usable_at(self, now: datetime) -> bool:
        return self.status == "active" and (self.expires_at is None or self.expires_at > now)

    def keys_at(self, now: datetime) -> list[KeyView]:
        """The active keys that have not expired at `now`."""
        return [k for k in self.keys if k.expires_at is None or k.expires_at > now]


@dataclass(frozen=True)
class IdentityRules:
    trust_domain: str
    max_expiry_days: int = 90


def _key_taken() -> Conflict:
    return Conflict("this public key is already registered to another identity: a key (its "
                    "RFC 7638 thumbprint, whatever its kid) belongs to one identity only, also "
                    "once revoked; generate a new key pair", code="key_already_registered")


class IdentityService:
    """Register, read, change and retire identities and their credentials."""

    def __init__(self, clock: Clock, audit: AuditService, rules: IdentityRules) -> None:
        self._clock = clock
        self._audit = audit
        self.rules = rules
        self._decommission_hooks: list[DecommissionHook] = []
        self._suspension_hooks: list[SuspensionHook] = []
        self._grant_ended_hooks: list[GrantEndedHook] = []

    def now(self) -> datetime:
        return self._clock.now()

    def on_decommission(self, hook: DecommissionHook) -> None:
        """Subscribe another package to decommissioning (it runs in the same transaction)."""
        self._decommission_hooks.append(hook)

    def on_suspend(self, hook: SuspensionHook) -> None:
        """Subscribe another package to suspension (by an admin or by a risk response); it
        runs in the same transaction. Resuming revives nothing the subscribers ended."""
        self._suspension_hooks.append(hook)

    def on_grant_ended(self, hook: GrantEndedHook) -> None:
        """Subscribe another package to the end of a grant (it runs in the same transaction)."""
        self._grant_ended_hooks.append(hook)

    # -- representation ---------------------------------------------------------------------

    def spiffe_id(self, row: IdentityRow) -> str:
        return f"spiffe://{self.rules.trust_domain}/{row.kind}/{row.name}"

    def read(self, session: Session, row: IdentityRow) -> IdentityRead:
        return IdentityRead(
            id=row.id, name=row.name, kind=row.kind, owner=row.owner_id, purpose=row.purpose,
            attributes=row.attributes, status=row.status, client_id=row.id,
            spiffe_id=self.spiffe_id(row), roles=self.roles(session, row.id),
            allowed_scopes=row.allowed_scopes, allowed_audiences=row.allowed_audiences,
            token_ttl=row.token_ttl, dpop_required=bool(row.dpop_required),
            may_act_for=list(row.may_act_for or []), expires_at=row.expires_at, created_at=row.created_at, updated_at=row.updated_at,
            last_seen_at=row.last_seen_at, status_changed_at=row.status_changed_at,
            status_changed_by=row.status_changed_by, status_reason=row.status_reason)

    @staticmethod
    def credential_read(row: CredentialRow) -> CredentialRead:
        return CredentialRead(id=row.id, identity_id=row.identity_id, type=row.type, kid=row.kid,
                              thumbprint=row.thumbprint, jwk=row.public_jwk, status=row.status,
                              created_at=row.created_at, expires_at=row.expires_at,
                              last_used_at=row.last_used_at, revoked_at=row.revoked_at)

    # -- queries ----------------------------------------------------------------------------

    def get(self, session: Session, identity_id: str) -> IdentityRow:
        # A value no id or name can hold (NUL, a control character, too long) names nothing:
        # asking the database would fail on PostgreSQL instead of finding nothing.
        if not identifier(identity_id, NAME_MAX):
            raise NotFound(f"identity {identity_id!r} not found")
        row = session.get(IdentityRow, identity_id)
        if row is None:
            row = session.scalars(select(IdentityRow).where(IdentityRow.name == identity_id)
                                  ).one_or_none()
        if row is None:
            raise NotFound(f"identity {identity_id!r} not found")
        return row

    def find(self, session: Session, identity_id: str) -> IdentityRow | None:
        return session.get(IdentityRow, identity_id) if identifier(identity_id, NAME_MAX) \
            else None

    # (The annotations below this method say `builtins.list`: in the class body, `list` is it.)
    def list(self, session: Session, *, kind: str | None = None, status: str | None = None,
             owner: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[IdentityRow], str | None]:
        q = select(IdentityRow)
        if kind:
            q = q.where(IdentityRow.kind == kind)
        if status:
            q = q.where(IdentityRow.status == status)
        if owner:
            q = q.where(IdentityRow.owner_id == owner)
        if cursor:
            q = q.where(IdentityRow.id > cursor)
        rows = list(session.scalars(q.order_by(IdentityRow.id).limit(limit + 1)))
        next_cursor = rows[limit - 1].id if len(rows) > limit else None
        return rows[:limit], next_cursor

    def roles(self, session: Session, identity_id: str) -> builtins.list[str]:
        now = self._clock.now()
        return sorted(set(session.scalars(select(GrantRow.role).where(
            GrantRow.identity_id == identity_id,
            or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > now)))))

    def grant_ends(self, session: Session, identity_id: str) -> dict[str, datetime | None]:
        """Each role the identity holds now, with the end of its longest-lived live grant
        (None: a grant without an end)."""
        now = self._clock.now()
        ends: dict[str, datetime | None] = {}
        for role, expires in session.execute(select(GrantRow.role, GrantRow.expires_at).where(
                GrantRow.identity_id == identity_id,
                or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > now))):
            if role not in ends:
                ends[role] = expires
                continue
            held = ends[role]
            ends[role] = None if held is None or expires is None else max(held, expires)
        return ends

    def has_role(self, session: Session, identity_id: str, role: str) -> bool:
        return role in self.roles(session, identity_id)

    def is_usable(self, row: IdentityRow) -> bool:
        """Active and not past its expiry: may authenticate and act."""
        return row.status == "active" and (row.expires_at is None or
                                           row.expires_at > self._clock.now())

    # -- validation -------------------------------------------------------------------------

    def _check_expiry(self, kind: str, expires_at: datetime | None) -> None:
        now = self._clock.now()
        if expires_at is None:
            if kind != "human":
                raise ValidationFailed("a non-human identity needs an expiry date (expires_at)",
                                       code="expiry_required")
            return
        if expires_at <= now:
            raise ValidationFailed("expires_at must be in the future", code="expiry_in_past")
        limit = now + timedelta(days=self.rules.max_expiry_days)
        if kind != "human" and expires_at > limit:
            raise ValidationFailed(
                f"expires_at is beyond the maximum of {self.rules.max_expiry_days} days",
                code="expiry_too_far")

    @staticmethod
    def _check_lists(scopes: builtins.list[str] | None,
                     audiences: builtins.list[str] | None) -> None:
        for s in scopes or []:
            if not re.match(SCOPE_TOKEN, s):
                raise ValidationFailed(f"invalid scope token {s!r}")
        for a in audiences or []:
            if not isinstance(a, str) or not 0 < len(a) <= 400:
                raise ValidationFailed("each audience must be a string of 1 to 400 characters")

    @staticmethod
    def _check_attributes(attributes: dict[str, Any]) -> None:
        if len(json.dumps(attributes)) > MAX_ATTRIBUTES_BYTES:
            raise ValidationFailed(f"attributes exceed {MAX_ATTRIBUTES_BYTES} bytes")

    # -- commands ---------------------------------------------------------------------------

    def register(self, session: Session, data: IdentityCreate, *, actor: str | None,
                 ctx: RequestContext | None = None) -> IdentityRow:
        now = self._clock.now()
        if data.kind != "human":
            if not data.owner:
                raise ValidationFailed("a non-human identity must name an owner (a human)",
                                       code="owner_required")
            if not data.purpose.strip():
                raise ValidationFailed("a non-human identity must state its purpose",
                                       code="purpose_required")
        if data.owner:
            owner = session.get(IdentityRow, data.owner)
            if owner is None or owner.kind != "human" or not self.is_usable(owner):
                raise ValidationFailed("the owner must be an active human identity",
                                       code="owner_invalid")
        self._check_expiry(data.kind, data.expires_at)
        self._check_attributes(data.attributes)
        self._check_lists(data.allowed_scopes, data.allowed_audiences)
        if session.scalars(select(IdentityRow.id).where(IdentityRow.name == data.name)).first():
            raise Conflict(f"an identity named {data.name!r} already exists")
        row = IdentityRow(id=new_id("idn", now), name=data.name, kind=data.kind,
                          owner_id=data.owner, purpose=data.purpose, attributes=data.attributes,
                          status="active", allowed_scopes=data.allowed_scopes,
                          allowed_audiences=data.allowed_audiences, expires_at=data.expires_at,
                          token_ttl=data.token_ttl, dpop_required=data.dpop_required,
                          may_act_for=data.may_act_for, created_at=now, updated_at=now)
        session.add(row)
        try:
            session.flush()
        except IntegrityError as exc:  # a concurrent registration took the name
            raise Conflict(f"an identity named {data.name!r} already exists") from exc
        self._audit.record(session, ev.IDENTITY_REGISTERED, actor=actor, subject=row.id,
                           ctx=ctx, data={"name": row.name, "kind": row.kind,
                                          "owner": row.owner_id})
        return row

    def update(self, session: Session, identity_id: str, patch: IdentityUpdate, *,
               actor: str | None, ctx: RequestContext | None = None) -> IdentityRow:
        row = self.get(session, identity_id)
        if row.status == "decommissioned":
            raise Conflict("a decommissioned identity cannot be changed")
        fields = patch.model_dump(exclude_unset=True)
        if "expires_at" in fields:
            self._check_expiry(row.kind, patch.expires_at)
        if patch.attributes is not None:
            self._check_attributes(patch.attributes)
        self._check_lists(patch.allowed_scopes, patch.allowed_audiences)
        for key, value in fields.items():
            if value is None and key not in ("expires_at", "token_ttl"):
                continue
            setattr(row, key, value)
        row.updated_at = self._clock.now()
        self._audit.record(session, ev.IDENTITY_UPDATED, actor=actor, subject=row.id, ctx=ctx,
                           data={"fields": sorted(fields)})
        return row

    def _set_status(self, session: Session, identity_id: str, status: str, event: str,
                    actor: str | None, reason: str, ctx: RequestContext | None,
                    allowed_from: tuple[str, ...]) -> IdentityRow:
        row = self.get(session, identity_id)
        if row.status not in allowed_from:
            raise Conflict(f"identity is {row.status}; cannot change it to {status}",
                           code="invalid_transition")
        now = self._clock.now()
        row.status, row.status_changed_at, row.status_changed_by = status, now, actor
        row.status_reason, row.updated_at = reason or None, now
        if status != "active":
            row.suspended_at = now
        self._audit.record(session, event, actor=actor, subject=row.id, ctx=ctx,
                           reasons=[reason] if reason else [])
        return row

    def suspend(self, session: Session, identity_id: str, *, actor: str | None,
                reason: str = "", ctx: RequestContext | None = None) -> IdentityRow:
        """Records who and why, and tells subscribers (they end what the identity holds)."""
        row = self._set_status(session, identity_id, "suspended", ev.IDENTITY_SUSPENDED, actor,
                               reason, ctx, ("active",))
        for hook in self._suspension_hooks:
            hook(session, row, actor or "")
        return row

    def resume(self, session: Session, identity_id: str, *, actor: str | None,
               reason: str = "", ctx: RequestContext | None = None) -> IdentityRow:
        return self._set_status(session, identity_id, "active", ev.IDENTITY_RESUMED, actor,
                                reason, ctx, ("suspended",))

    def decommission(self, session: Session, identity_id: str, *, actor: str | None,
                     reason: str = "", ctx: RequestContext | None = None) -> IdentityRow:
        """Terminal: records who and why, revokes every credential, tells subscribers."""
        row = self._set_status(session, identity_id, "decommissioned",
                               ev.IDENTITY_DECOMMISSIONED, actor, reason, ctx,
                               ("active", "suspended"))
        now = self._clock.now()
        session.execute(update(CredentialRow).where(
            CredentialRow.identity_id == row.id, CredentialRow.status == "active")
            .values(status="revoked", revoked_at=now))
        session.execute(update(GrantRow).where(
            GrantRow.identity_id == row.id,
            or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > now)).values(expires_at=now))
        for hook in self._decommission_hooks:
            hook(session, row, actor or "")
        return row

    def grant_role(self, session: Session, identity_id: str, role: str, *, actor: str | None,
                   expires_at: datetime | None = None,
                   ctx: RequestContext | None = None) -> GrantRow:
        row = self.get(session, identity_id)
        now = self._clock.now()
        grant = GrantRow(id=new_id("grt", now), identity_id=row.id, role=role, granted_by=actor,
                         created_at=now, expires_at=expires_at)
        session.add(grant)
        self._audit.record(session, ev.GRANT_ADDED, actor=actor, subject=row.id, ctx=ctx,
                           resource=f"role:{role}")
        return grant

    def end_grant(self, session: Session, grant_id: str, *, actor: str | None,
                  reason: str = "", ctx: RequestContext | None = None) -> GrantRow:
        """End a grant now (before its expiry, if it has one) and tell subscribers."""
        grant = session.get(GrantRow, grant_id)
        if grant is None:
            raise NotFound(f"grant {grant_id!r} not found")
        now = self._clock.now()
        if grant.expires_at is not None and grant.expires_at <= now:
            return grant
        grant.expires_at = now
        session.flush()
        self._audit.record(session, ev.GRANT_REMOVED, actor=actor, subject=grant.identity_id,
                           resource=f"role:{grant.role}", ctx=ctx,
                           reasons=[reason] if reason else [],
                           data={"grant": grant.id, "ended_at": now})
        for hook in self._grant_ended_hooks:
            hook(session, grant.identity_id, grant.role, actor or "")
        return grant

    def purge_expired_grants(self, session: Session, *, limit: int = 500) -> int:
        """Delete grants past their expiry (JIT grants); each removal is audited and told to
        subscribers."""
        now = self._clock.now()
        rows = list(session.scalars(select(GrantRow).where(
            GrantRow.expires_at.is_not(None), GrantRow.expires_at <= now).limit(limit)))
        for grant in rows:
            session.delete(grant)
            self._audit.record(session, ev.GRANT_REMOVED, subject=grant.identity_id,
                               resource=f"role:{grant.role}",
                               data={"grant": grant.id, "expired_at": grant.expires_at})
        session.flush()
        for grant in rows:
            for hook in self._grant_ended_hooks:
                hook(session, grant.identity_id, grant.role, "")
        return len(rows)

    # -- credentials ------------------------------------------------------------------------

    def add_credential(self, session: Session, identity_id: str, data: CredentialCreate, *,
                       actor: str | None, ctx: RequestContext | None = None) -> CredentialRow:
        row = self.get(session, identity_id)
        if not self.is_usable(row):
            raise Conflict(f"identity is {row.status}; credentials cannot be added",
                           code="identity_inactive")
        public, kid, thumb = validate_public_jwk(data.jwk)
        now = self._clock.now()
        if data.expires_at is not None and data.expires_at <= now:
            raise ValidationFailed("expires_at must be in the future")
        claim = session.get(KeyClaimRow, thumb)
        if claim is not None and claim.identity_id != row.id:
            raise _key_taken()
        existing = session.scalars(select(CredentialRow).where(
            CredentialRow.identity_id == row.id,
            or_(CredentialRow.kid == kid, CredentialRow.thumbprint == thumb))).first()
        if existing is not None:
            raise Conflict("this identity already has a credential with that key or kid")
        expires = data.expires_at or row.expires_at
        cred = CredentialRow(id=new_id("crd", now), identity_id=row.id, type="jwk", kid=kid,
                             thumbprint=thumb, public_jwk=public, status="active",
                             created_at=now, expires_at=expires)
        try:
            with session.begin_nested():
                session.add(cred)
                if claim is None:
                    session.add(KeyClaimRow(thumbprint=thumb, identity_id=row.id,
                                            credential_id=cred.id, created_at=now))
        except IntegrityError as exc:
            # Another transaction claimed the key between the check and this insert.
            raise _key_taken() from exc
        self._audit.record(session, ev.CREDENTIAL_ADDED, actor=actor, subject=row.id, ctx=ctx,
                           resource=f"credential:{cred.id}", data={"kid": kid,
                                                                   "thumbprint": thumb})
        return cred

    def credentials(self, session: Session, identity_id: str) -> builtins.list[CredentialRow]:
        row = self.get(session, identity_id)
        return list(session.scalars(select(CredentialRow).where(
            CredentialRow.identity_id == row.id).order_by(CredentialRow.id)))

    def revoke_credential(self, session: Session, identity_id: str, credential_id: str, *,
                          actor: str | None, ctx: RequestContext | None = None) -> CredentialRow:
        row = self.get(session, identity_id)
        cred = session.get(CredentialRow, credential_id)
        if cred is None or cred.identity_id != row.id:
            raise NotFound(f"credential {credential_id!r} not found on this identity")
        if cred.status == "revoked":
            return cred
        cred.status, cred.revoked_at = "revoked", self._clock.now()
        self._audit.record(session, ev.CREDENTIAL_REVOKED, actor=actor, subject=row.id, ctx=ctx,
                           resource=f"credential:{cred.id}", data={"kid": cred.kid})
        return cred

    def usable_credentials(self, session: Session, identity_id: str,
                           kid: str | None) -> builtins.list[CredentialRow]:
        """Active, unexpired credentials of an identity (one kid, or all when kid is None)."""
        now = self._clock.now()
        q = select(CredentialRow).where(
            CredentialRow.identity_id == identity_id, CredentialRow.status == "active",
            or_(CredentialRow.expires_at.is_(None), CredentialRow.expires_at > now))
        if kid is not None:
            q = q.where(CredentialRow.kid == kid)
        return list(session.scalars(q))

    def client_view(self, session: Session, identity_id: str) -> ClientView | None:
        """The identity and its active keys in one round trip (the token endpoint's hot path).
        Status and expiry are judged at use (`usable_at`, `keys_at`): the view may be cached."""
        if not identifier(identity_id, NAME_MAX):
            return None
        rows = session.execute(_CLIENT_VIEW, {"identity_id": identity_id}).all()
        if not rows:
            return None
        first = rows[0]
        keys = [KeyView(r.cid, r.kid, r.public_jwk, r.last_used_at, r.thumbprint, r.cexp)
                for r in rows if r.cid is not None]
        return ClientView(first.id, list(first.allowed_scopes), list(first.allowed_audiences),
                          first.expires_at, first.last_seen_at, keys, kind=first.kind,
                          token_ttl=first.token_ttl, dpop_required=bool(first.dpop_required),
                          may_act_for=list(first.may_act_for or []),
                          spiffe_id=f"spiffe://{self.rules.trust_domain}/{first.kind}/"
                                    f"{first.name}", status=first.status, rev=first.rev)

    def credential_revoked_since(self, session: Session, identity_id: str,
                                 since: datetime) -> bool:
        """True when any credential of the identity was revoked at or after `since` (key
        compromise: tokens obtained before it are no longer trusted). `since` is a token's
        `iat`, in whole seconds: a revocation in the token's own second counts (fail closed)."""
        return session.scalars(select(CredentialRow.id).where(
            CredentialRow.identity_id == identity_id,
            CredentialRow.revoked_at >= since).limit(1)).first() is not None

    @staticmethod
    def revisions(session: Session, identity_ids: builtins.list[str]
                  ) -> builtins.list[tuple[str, int]]:
        """(id, rev) of each of these identities that exists. `rev` moves with any change to
        an identity or its credentials, so a cached decision can tell that it went stale."""
        rows = session.execute(select(IdentityRow.id, IdentityRow.rev)
                               .where(IdentityRow.id.in_(identity_ids))).all()
        return [(str(r[0]), int(r[1])) for r in rows]

    def touch_statements(self, client: ClientView, key: KeyView
                         ) -> builtins.list[tuple[Any, dict[str, Any]]]:
        """Record use: the usage-stamp updates due now (at most one a minute per row, to keep
        the hot path light), as statements to run in whichever transaction commits the token.
        The views are stamped at once, so concurrent requests on a cached view do not repeat
        them."""
        now = self._clock.now()
        stale = timedelta(seconds=60)
        out: list[tuple[Any, dict[str, Any]]] = []
        if key.id is not None and (key.last_used_at is None or now - key.last_used_at > stale):
            key.last_used_at = now
            out.append((_TOUCH_KEY, {"row_id": key.id, "now": now}))
        if client.last_seen_at is None or now - client.last_seen_at > stale:
            client.last_seen_at = now
            out.append((_TOUCH_IDENTITY, {"row_id": client.id, "now": now}))
        return out

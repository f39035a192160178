"""The decision point's service: snapshots from the database, the policy store, the resource
catalog and imported entities, decisions with their audit record.

Services never commit; the caller owns the transaction.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources as pkg_resources
from typing import Any

import cedarpy
from sqlalchemy import event, func, inspect, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.authz import approvals
from tessera.authz.decision_log import DEFAULT_SET, DecisionLog
from tessera.authz.engine import (
    ACTION_TYPE,
    KIND_BY_TYPE,
    ROLE_TYPE,
    Decision,
    EvalRequest,
    IdentityRecord,
    Snapshot,
    SnapshotSource,
    cedar_record,
)
from tessera.authz.errors import PolicyError, PolicyProblem
from tessera.authz.models import AuthzStateRow, EntityRow, PolicySetRow, PolicyVersionRow
from tessera.authz.policies import ParsedPolicies, parse_files
from tessera.authz.ports import ApprovalGate, ApprovalRedeemer, NoRisk, RiskProvider
from tessera.authz.schema import declared_names, generate_schema, validate
from tessera.clock import Clock
from tessera.db import make_session_factory
from tessera.errors import Conflict, NotFound, ValidationFailed, WouldBlock
from tessera.identity import IdentityService
from tessera.identity.models import GrantRow, IdentityRow
from tessera.ids import new_id

ADMIN_SET = "admin"
POLICY_SETS = (DEFAULT_SET, ADMIN_SET)
SET_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]{0,199}\.cedar$")
TYPE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*$")
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
IMPACT_LEVELS = ("low", "medium", "high", "critical")
API_RESOURCE = ("Api", "tessera")
ACT_FOR = "act_for"  # Action::"act_for": may the principal act for the resource (delegation)
CHECK_INTERVAL = 1.0  # seconds between version checks on one node
_IGNORED_IDENTITY_FIELDS = {"last_seen_at", "updated_at"}


def builtin_admin_policies() -> dict[str, str]:
    """The built-in management policy set (used until an `admin` version is pushed)."""
    text = (pkg_resources.files("tessera.authz") / "builtin_admin.cedar").read_text()
    return {"builtin_admin.cedar": text}


@dataclass
class PushResult:
    version: int
    active: bool
    digest: str
    policies: list[str]


def _upsert_state(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(AuthzStateRow).values(id=1, version=2)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[AuthzStateRow.id],
        set_={"version": AuthzStateRow.__table__.c.version + 1}))


def _relevant(obj: Any) -> bool:
    if isinstance(obj, (GrantRow, EntityRow, PolicySetRow)):
        return True
    if isinstance(obj, IdentityRow):
        state = inspect(obj)
        return any(attr.history.has_changes() for attr in state.attrs
                   if attr.key not in _IGNORED_IDENTITY_FIELDS)
    return False


class AuthzService(DecisionLog):
    """Snapshot management, policy store, catalog, evaluation and the decision log."""

    def __init__(self, clock: Clock, audit: AuditService, identities: IdentityService,
                 risk: RiskProvider | None = None, aliases: Mapping[str, str] | None = None,
                 check_interval: float = CHECK_INTERVAL) -> None:
        self._clock = clock
        self._audit = audit
        self._identities = identities
        self.risk: RiskProvider = risk or NoRisk()
        self._aliases = dict(aliases) if aliases else None
        self._interval = check_interval
        self._sessions: sessionmaker[Session] | None = None
        self._snapshots: dict[str, Snapshot] = {}
        self._checked = 0.0
        self._dirty = True
        self._lock = threading.Lock()
        # Spends approval references (`@approval` obligations); wired in the container.
        self.approval_redeemer: ApprovalRedeemer | None = None
        # Says when every permit of a principal needs approval (a risk response); wired too.
        self.approval_gate: ApprovalGate | None = None

    # -- change tracking -------------------------------------------------------------------

    def install(self, sessions: sessionmaker[Session]) -> None:
        """Watch the session factory: changes the snapshot depends on bump the version."""
        # Snapshot reads take no write lock (SQLite), so they never wait on a request's writes.
        self._sessions = make_session_factory(sessions.kw["bind"], readonly=True)

        @event.listens_for(sessions, "before_flush")
        def _bump(session: Session, _ctx: Any, _instances: Any) -> None:
            if session.info.get("authz_bumped"):
                return
            changed = any(_relevant(o) for o in (*session.new, *session.dirty,
                                                 *session.deleted))
            if changed:
                session.info["authz_bumped"] = True
                _upsert_state(session)

        @event.listens_for(sessions, "after_commit")
        def _committed(session: Session) -> None:
            if session.info.pop("authz_bumped", False):
                self._dirty = True

        @event.listens_for(sessions, "after_rollback")
        def _rolled_back(session: Session) -> None:
            session.info.pop("authz_bumped", None)

    def set_risk_provider(self, provider: RiskProvider) -> None:
        self.risk = provider
        self._dirty = True

    def mark_dirty(self) -> None:
        self._dirty = True

    @staticmethod
    def db_version(session: Session) -> int:
        return int(session.scalar(select(AuthzStateRow.version).where(AuthzStateRow.id == 1))
                   or 0)

    def refresh_due(self) -> bool:
        """Whether answering now would read the database: a snapshot version check (or
        rebuild) is due, or the approval gate has to read. An event loop asks this to run
        `refresh()` on a worker thread first, and to decide from memory otherwise."""
        snap = self._snapshots.get(DEFAULT_SET)
        if snap is None or self._dirty or time.monotonic() - self._checked >= self._interval:
            return True
        valid_until = snap.source.valid_until
        if valid_until is not None and valid_until <= self._clock.now().timestamp():
            return True
        gate = self.approval_gate
        if gate is not None:
            needs_io = getattr(gate, "needs_io", None)
            return True if needs_io is None else bool(needs_io())
        return False

    def refresh(self) -> None:
        """Do the reads `refresh_due()` announced (blocking: call it off the event loop)."""
        self.snapshot()
        refresh = getattr(self.approval_gate, "refresh", None)
        if refresh is not None and getattr(self.approval_gate, "needs_io", lambda: False)():
            refresh()

    def current(self, name: str = DEFAULT_SET) -> Snapshot:
        """The snapshot in memory, without any check (after `refresh_due()` said False)."""
        snap = self._snapshots.get(name)
        return snap if snap is not None else self.snapshot(name)

    def snapshot(self, name: str = DEFAULT_SET) -> Snapshot:
        """The current snapshot; checks the database version at most once a second."""
        snap = self._snapshots.get(name)
        now = time.monotonic()
        stale_time = snap is not None and snap.source.valid_until is not None and \
            snap.source.valid_until <= self._clock.now().timestamp()
        if snap is not None and not self._dirty and not stale_time and \
                now - self._checked < self._interval:
            return snap
        if snap is not None and not self._lock.acquire(blocking=False):
            return snap  # another thread is refreshing: answer from the current snapshot
        if snap is None:
            self._lock.acquire()
        try:
            if self._sessions is None:
                raise RuntimeError("AuthzService.install() was not called")
            self._dirty = False
            with self._sessions() as session:
                version = self.db_version(session)
                current = self._snapshots.get(DEFAULT_SET)
                if current is None or current.version != version or stale_time:
                    self._snapshots = self._build(session, version)
                session.rollback()
            self._checked = time.monotonic()
        finally:
            self._lock.release()
        return self._snapshots[name]

    # -- building --------------------------------------------------------------------------

    def load_source(self, session: Session, version: int) -> tuple[SnapshotSource,
                                                                   SnapshotSource]:
        """Read identities, grants, entities and the active policies into two sources."""
        now = self._clock.now()
        ts = now.timestamp()
        valid_until: float | None = None
        roles: dict[str, list[str]] = {}
        for identity_id, role, expires in session.execute(select(
                GrantRow.identity_id, GrantRow.role, GrantRow.expires_at).where(
                or_(GrantRow.expires_at.is_(None), GrantRow.expires_at > now))):
            roles.setdefault(identity_id, []).append(role)
            if expires is not None:
                exp = expires.timestamp() if expires.tzinfo else expires.replace(
                    tzinfo=now.tzinfo).timestamp()
                valid_until = exp if valid_until is None else min(valid_until, exp)
        identities: dict[str, IdentityRecord] = {}
        td = self._identities.rules.trust_domain
        for row in session.execute(select(
                IdentityRow.id, IdentityRow.kind, IdentityRow.name, IdentityRow.status,
                IdentityRow.owner_id, IdentityRow.purpose, IdentityRow.attributes,
                IdentityRow.expires_at)):
            exp = row.expires_at
            exp_ts = None
            if exp is not None:
                exp_ts = exp.timestamp() if exp.tzinfo else exp.replace(
                    tzinfo=now.tzinfo).timestamp()
            identities[row.id] = IdentityRecord(
                id=row.id, kind=row.kind, name=row.name, status=row.status, owner=row.owner_id,
                purpose=row.purpose or "", attributes=row.attributes or {}, expires_at=exp_ts,
                roles=tuple(sorted(set(roles.get(row.id, ())))),
                spiffe_id=f"spiffe://{td}/{row.kind}/{row.name}")
        entities: dict[tuple[str, str], dict[str, Any]] = {}
        for e in session.scalars(select(EntityRow)):
            entities[(e.type, e.eid)] = {"uid": {"type": e.type, "id": e.eid},
                                         "attrs": e.attrs, "parents": e.parents}
        for role in {r for rs in roles.values() for r in rs}:
            entities.setdefault((ROLE_TYPE, role), {"uid": {"type": ROLE_TYPE, "id": role},
                                                    "attrs": {}, "parents": []})
        sources = []
        for name in POLICY_SETS:
            files, fragment, pv = self.active_files(session, name)
            try:
                parsed = parse_files(files)
            except PolicyError:
                parsed = ParsedPolicies()  # stored versions were validated; never fail open
            extra = declared_names(fragment)[0] if fragment else set()
            src = SnapshotSource(version=version, policy_version=pv, policies=parsed,
                                 identities=identities, entities=entities,
                                 extra_types=extra, valid_until=valid_until, built_at=ts)
            if self._aliases is not None:
                src.aliases = dict(self._aliases)
            sources.append(src)
        return sources[0], sources[1]

    def _build(self, session: Session, version: int) -> dict[str, Snapshot]:
        default, admin = self.load_source(session, version)
        return {DEFAULT_SET: Snapshot(default, self.risk), ADMIN_SET: Snapshot(admin, self.risk)}

    # -- policy store ----------------------------------------------------------------------

    @staticmethod
    def _check_set(name: str) -> None:
        if name not in POLICY_SETS:
            raise ValidationFailed(f"unknown policy set {name!r}; use one of "
                                   f"{', '.join(POLICY_SETS)}", code="unknown_policy_set")

    def active_files(self, session: Session, name: str) -> tuple[dict[str, str], str | None,
                                                                 int | None]:
        row = session.get(PolicySetRow, name)
        if row is None or row.active_version is None:
            return (builtin_admin_policies() if name == ADMIN_SET else {}), None, None
        ver = self._version_row(session, name, row.active_version)
        return dict(ver.files), ver.schema_fragment, ver.version

    def _version_row(self, session: Session, name: str, version: int) -> PolicyVersionRow:
        row = session.scalars(select(PolicyVersionRow).where(
            PolicyVersionRow.policy_set == name, PolicyVersionRow.version == version)
        ).one_or_none()
        if row is None:
            raise NotFound(f"policy set {name!r} has no version {version}")
        return row

    def schema_for(self, session: Session, parsed: ParsedPolicies | None,
                   fragment: str | None) -> str:
        """The Cedar schema policies are validated against (generated + fragment)."""
        attrs = [a for (a,) in session.execute(select(IdentityRow.attributes)) if a]
        ents = [{"uid": {"type": e.type, "id": e.eid}, "attrs": e.attrs, "parents": e.parents}
                for e in session.scalars(select(EntityRow))]
        return generate_schema(identity_attrs=[cedar_record(a) for a in attrs],
                               entities=ents, policies=parsed, fragment=fragment)

    def check(self, session: Session, files: Mapping[str, str],
              schema_fragment: str | None = None) -> ParsedPolicies:
        """Parse and validate; raises PolicyError with file/line/column."""
        for name in files:
            if not FILE_NAME_RE.match(name) or ".." in name:
                raise PolicyError([PolicyProblem(name, 1, 1, "file names must end in .cedar "
                                                 "and use letters, digits, . _ - /")])
        parsed = parse_files(files)
        validate(files, self.schema_for(session, parsed, schema_fragment))
        return parsed

    def push(self, session: Session, name: str, files: Mapping[str, str], *,
             schema_fragment: str | None = None, author: str | None, message: str = "",
             activate: bool = True, ctx: RequestContext | None = None) -> PushResult:
        self._check_set(name)
        if not files:
            raise ValidationFailed("a policy set needs at least one .cedar file")
        parsed = self.check(session, files, schema_fragment)
        digest = hashlib.sha256(json.dumps([dict(files), schema_fragment or ""],
                                           sort_keys=True).encode()).hexdigest()
        last = session.scalar(select(func.max(PolicyVersionRow.version)).where(
            PolicyVersionRow.policy_set == name)) or 0
        now = self._clock.now()
        row = PolicyVersionRow(id=new_id("pol", now), policy_set=name, version=last + 1,
                               files=dict(files), schema_fragment=schema_fragment,
                               digest=digest, author=author, message=message, created_at=now)
        session.add(row)
        session.flush()
        self._audit.record(session, ev.POLICY_PUSHED, actor=author, ctx=ctx,
                           resource=f"policy_set:{name}",
                           data={"version": row.version, "digest": digest,
                                 "files": sorted(files), "message": message})
        if activate:
            self.activate(session, name, row.version, actor=author, ctx=ctx)
        return PushResult(row.version, activate, digest, [p.id for p in parsed.policies])

    def activate(self, session: Session, name: str, version: int, *, actor: str | None,
                 ctx: RequestContext | None = None) -> PolicyVersionRow:
        self._check_set(name)
        row = self._version_row(session, name, version)
        state = session.get(PolicySetRow, name)
        now = self._clock.now()
        previous = state.active_version if state else None
        if state is None:
            session.add(PolicySetRow(name=name, active_version=version, updated_at=now,
                                     updated_by=actor))
        else:
            state.active_version, state.updated_at, state.updated_by = version, now, actor
        self._audit.record(session, ev.POLICY_ACTIVATED, actor=actor, ctx=ctx,
                           resource=f"policy_set:{name}",
                           data={"version": version, "previous": previous})
        return row

    def rollback(self, session: Session, name: str, *, actor: str | None,
                 ctx: RequestContext | None = None) -> PolicyVersionRow:
        """Activate the version before the active one."""
        self._check_set(name)
        state = session.get(PolicySetRow, name)
        if state is None or state.active_version is None:
            raise Conflict("no active version to roll back from", code="nothing_to_roll_back")
        prev = session.scalar(select(func.max(PolicyVersionRow.version)).where(
            PolicyVersionRow.policy_set == name,
            PolicyVersionRow.version < state.active_version))
        if prev is None:
            raise Conflict("the active version is the first one", code="nothing_to_roll_back")
        return self.activate(session, name, prev, actor=actor, ctx=ctx)

    def versions(self, session: Session, name: str) -> list[dict[str, Any]]:
        self._check_set(name)
        state = session.get(PolicySetRow, name)
        active = state.active_version if state else None
        rows = session.scalars(select(PolicyVersionRow).where(
            PolicyVersionRow.policy_set == name).order_by(PolicyVersionRow.version.desc()))
        return [self.version_summary(r, active) for r in rows]

    @staticmethod
    def version_summary(row: PolicyVersionRow, active: int | None) -> dict[str, Any]:
        return {"version": row.version, "author": row.author, "message": row.message,
                "created_at": row.created_at.isoformat(), "digest": row.digest,
                "files": sorted(row.files), "active": row.version == active}

    def show(self, session: Session, name: str, version: int | None) -> dict[str, Any]:
        self._check_set(name)
        state = session.get(PolicySetRow, name)
        active = state.active_version if state else None
        if version is None:
            if active is None:
                files, _, _ = self.active_files(session, name)
                return {"version": None, "builtin": True, "files": files, "active": True,
                        "schema_fragment": None}
            version = active
        row = self._version_row(session, name, version)
        return {**self.version_summary(row, active), "files": dict(row.files),
                "schema_fragment": row.schema_fragment}

    def diff(self, session: Session, name: str, a: int, b: int) -> str:
        self._check_set(name)
        left, right = self._version_row(session, name, a), self._version_row(session, name, b)
        out: list[str] = []
        for f in sorted(set(left.files) | set(right.files)):
            out.extend(difflib.unified_diff(
                str(left.files.get(f, "")).splitlines(keepends=True),
                str(right.files.get(f, "")).splitlines(keepends=True),
                fromfile=f"v{a}/{f}", tofile=f"v{b}/{f}"))
        return "".join(out)

    # -- catalog and imported entities -----------------------------------------------------

    @staticmethod
    def _check_uid(type_name: Any, eid: Any) -> tuple[str, str]:
        """The uid's (type, id), once both are known to be acceptable."""
        if not isinstance(type_name, str) or not TYPE_RE.match(type_name) or \
                len(type_name) > 128:
            raise ValidationFailed("an entity type must be a Cedar name such as Dataset",
                                   code="invalid_entity_type")
        if not isinstance(eid, str) or not 0 < len(eid) <= 256:
            raise ValidationFailed("an entity id must be a string of 1 to 256 characters")
        return type_name, eid

    @staticmethod
    def _check_catalog_attrs(attrs: Mapping[str, Any]) -> None:
        cls = attrs.get("classification")
        if cls is not None and cls not in CLASSIFICATIONS:
            raise ValidationFailed(f"classification must be one of {', '.join(CLASSIFICATIONS)}")
        impact = attrs.get("impact_level")
        if impact is not None and impact not in IMPACT_LEVELS:
            raise ValidationFailed(f"impact_level must be one of {', '.join(IMPACT_LEVELS)}")
        dc = attrs.get("data_classes")
        if dc is not None and (not isinstance(dc, list) or
                               not all(isinstance(x, str) for x in dc)):
            raise ValidationFailed("data_classes must be a list of strings such as PII, PHI")

    def put_entity(self, session: Session, source: str, entity: Mapping[str, Any], *,
                   actor: str | None, ctx: RequestContext | None = None) -> EntityRow:
        uid = entity.get("uid")
        if not isinstance(uid, dict):
            raise ValidationFailed("each entity needs a uid {type, id}")
        type_name, eid = self._check_uid(uid.get("type"), uid.get("id"))
        if type_name == ACTION_TYPE and source == "catalog":
            raise ValidationFailed("actions are imported through /v1/entities")
        attrs = entity.get("attrs", {}) or {}
        parents = entity.get("parents", []) or []
        if not isinstance(attrs, dict) or not isinstance(parents, list):
            raise ValidationFailed("attrs must be an object and parents a list")
        for p in parents:
            if not isinstance(p, dict):
                raise ValidationFailed("each parent must be {type, id}")
            self._check_uid(p.get("type"), p.get("id"))
        if source == "catalog":
            self._check_catalog_attrs(attrs)
        clean = cedar_record(attrs)
        doc: dict[str, Any] = {"uid": {"type": type_name, "id": eid}, "attrs": clean,
                               "parents": [{"type": p["type"], "id": p["id"]} for p in parents]}
        try:
            cedarpy.Entities.from_json_str(json.dumps([doc]))
        except ValueError as exc:
            raise ValidationFailed(f"not a valid Cedar entity: {exc}"[:300]) from exc
        if type_name in KIND_BY_TYPE and self._identities.find(session, eid) is not None:
            raise Conflict("that uid is a registered identity; change it in the registry")
        now = self._clock.now()
        row = session.get(EntityRow, (type_name, eid))
        if row is not None and row.source != source:
            raise Conflict(f"{type_name}::{eid} already exists as a {row.source} entity")
        if row is None:
            row = EntityRow(type=type_name, eid=eid, source=source, attrs=clean,
                            parents=doc["parents"], created_at=now, updated_at=now,
                            updated_by=actor)
            session.add(row)
        else:
            row.attrs, row.parents, row.updated_at, row.updated_by = (clean, doc["parents"],
                                                                      now, actor)
        self._audit.record(session, ev.ENTITY_PUT, actor=actor, ctx=ctx,
                           resource=f"{type_name}::{eid}", data={"source": source})
        return row

    def get_entity(self, session: Session, source: str | None, type_name: str,
                   eid: str) -> EntityRow:
        row = session.get(EntityRow, (type_name, eid))
        if row is None or (source is not None and row.source != source):
            raise NotFound(f"{type_name}::{eid} not found")
        return row

    def delete_entity(self, session: Session, source: str, type_name: str, eid: str, *,
                      actor: str | None, ctx: RequestContext | None = None) -> None:
        row = self.get_entity(session, source, type_name, eid)
        session.delete(row)
        self._audit.record(session, ev.ENTITY_DELETED, actor=actor, ctx=ctx,
                           resource=f"{type_name}::{eid}", data={"source": source})

    def list_entities(self, session: Session, source: str | None, type_name: str | None,
                      limit: int, cursor: str | None) -> tuple[list[EntityRow], str | None]:
        q = select(EntityRow)
        if source:
            q = q.where(EntityRow.source == source)
        if type_name:
            q = q.where(EntityRow.type == type_name)
        if cursor:
            t, _, e = cursor.partition("::")
            q = q.where(or_(EntityRow.type > t, (EntityRow.type == t) & (EntityRow.eid > e)))
        rows = list(session.scalars(q.order_by(EntityRow.type, EntityRow.eid).limit(limit + 1)))
        nxt = f"{rows[limit - 1].type}::{rows[limit - 1].eid}" if len(rows) > limit else None
        return rows[:limit], nxt

    @staticmethod
    def entity_read(row: EntityRow) -> dict[str, Any]:
        return {"uid": {"type": row.type, "id": row.eid}, "attrs": row.attrs,
                "parents": row.parents, "source": row.source,
                "updated_at": row.updated_at.isoformat(), "updated_by": row.updated_by}

    # -- decisions -------------------------------------------------------------------------

    def evaluate(self, req: EvalRequest, *, policy_set: str = DEFAULT_SET) -> Decision:
        return self.snapshot(policy_set).evaluate(req, self._clock.now())

    def risk_needs_io(self, snap: Snapshot, principal: tuple[str, str]) -> bool:
        """Whether evaluating for `principal` would have the risk provider read the database."""
        needs_io = getattr(self.risk, "needs_io", None)
        if needs_io is None:
            return False
        subject = snap.risk_subject(principal)
        return subject is not None and bool(needs_io(subject))

    def decide(self, session: Session | None, snap: Snapshot, req: EvalRequest,
               now: datetime, *, actor: str | None, ctx: RequestContext | None,
               io: bool = True) -> Decision:
        """One decision, with `@approval` obligations handled (see `tessera.authz.approvals`).

        Without a session (decisions answered from memory) no approval reference may be
        presented: the caller takes the session path for those. With `io=False` (on an event
        loop) a risk score due for a read raises `WouldBlock` instead of reading."""
        if not io and self.risk_needs_io(snap, req.principal):
            raise WouldBlock("the principal's risk score is due for a read")
        required = self.approval_gate(session, req.principal[1]) \
            if self.approval_gate is not None else None
        return approvals.decide(snap, req, now, session=session,
                                redeemer=self.approval_redeemer, actor=actor, ctx=ctx,
                                required=required)

    def delegation_refusal(self, actor: str, subject: str) -> Decision | None:
        """Whether policy refuses that `actor` acts for `subject` (token exchange).

        Asks the default set for `Action::"act_for"` with the actor as principal and the
        subject as resource. Refuses only when a forbid determines the deny, or when some
        policy names `act_for` and none permits; with no policy about it, delegation stays
        with the identity's `may_act_for`. Returns the deny, or None when not refused."""
        snap = self.snapshot()
        arec, srec = snap.identity(actor), snap.identity(subject)
        req = EvalRequest(principal=arec.uid if arec else ("User", actor),
                          action=(ACTION_TYPE, ACT_FOR),
                          resource=srec.uid if srec else ("User", subject))
        decision = snap.evaluate(req, self._clock.now())
        if decision.allowed:
            return None
        forbidden = any((p := snap.policy(i)) is not None and p.effect == "forbid"
                        for i in decision.policies)
        return decision if forbidden or snap.names_action(req.action) else None

    def authorize_management(self, subject: str, method: str, route: str,
                             target: str | None, source: str | None, *,
                             snapshot: Snapshot | None = None,
                             io: bool = True) -> tuple[EvalRequest, Decision]:
        """Ask the `admin` policy set whether `subject` may call this management route
        (with `io=False`, `WouldBlock` when the subject's risk score is due for a read)."""
        snap = snapshot if snapshot is not None else self.snapshot(ADMIN_SET)
        rec = snap.identity(subject)
        principal = rec.uid if rec else ("User", subject)
        if not io and self.risk_needs_io(snap, principal):
            raise WouldBlock("the caller's risk score is due for a read")
        resource: tuple[str, str] = API_RESOURCE
        if target is not None:
            trec = snap.identity(target)
            resource = trec.uid if trec else ("Identity", target)
        req = EvalRequest(principal=principal, action=(ACTION_TYPE, f"{method} {route}"),
                          resource=resource, source=source)
        return req, snap.evaluate(req, self._clock.now())

    def export_snapshot(self, policy_set: str = DEFAULT_SET) -> dict[str, Any]:
        """Policies and entities for an in-process PEP (tessera.sdk.Authorizer)."""
        snap = self.snapshot(policy_set)
        src = snap.source
        return {
            "version": src.version, "policy_version": src.policy_version,
            "policies": [{"id": p.id, "effect": p.effect, "text": p.text,
                          "annotations": dict(p.annotations)} for p in src.policies.policies],
            "entities": [r.entity() for r in src.identities.values()] + list(
                src.entities.values()),
            "status": {r.id: {"status": r.status, "expires_at": r.expires_at, "type": r.uid[0]}
                       for r in src.identities.values()},
            "aliases": src.aliases,
        }


"""The monitor over the database: reads the audit stream by sequence number, stores alerts,
risk and baselines, and takes the configured response when risk crosses a threshold.

One process at a time consumes the stream: the one holding the lease on its cursor row (the
others skip their passes until the lease runs out); every node can read risk.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService
from tessera.audit import events as ev
from tessera.audit.service import StreamEvent
from tessera.clock import Clock
from tessera.errors import Conflict, NotFound, ValidationFailed
from tessera.identity import IdentityService
from tessera.monitor.baseline import Baseline
from tessera.monitor.engine import (
    MONITOR_ACTOR,
    ORG,
    Alert,
    Monitor,
    MonitorConfig,
    event_from_row,
)
from tessera.monitor.models import AlertRow, BaselineRow, ResponseRow, RiskRow, StreamCursorRow

CURSOR = "monitor"
RESPONSE_KINDS = ("notify", "require_approval", "suspend")
TokenRevoker = Callable[[Session, str], int]
# (session, events): sees every event the monitor consumes, before the monitor does.
# Whatever it returns is ignored.
EventHook = Callable[[Session, list[StreamEvent]], object]
# (session, owner id or None, notice): tells the identity's owner about a response.
OwnerNotifier = Callable[[Session, str | None, dict[str, Any]], None]
NOTIFYING = ("notify", "suspend")  # the responses the owner is told about
_CURSORS = StreamCursorRow.__table__
_READ_CURSOR = select(_CURSORS.c.seq, _CURSORS.c.owner, _CURSORS.c.lease_until).where(
    _CURSORS.c.name == CURSOR)
# Moves the cursor only from where the pass read it (another process may have moved it since),
# and takes or renews the lease with it.
_MOVE_CURSOR = update(_CURSORS).where(_CURSORS.c.name == CURSOR,
                                      _CURSORS.c.seq == bindparam("old_seq")).values(
    seq=bindparam("new_seq"), owner=bindparam("new_owner"),
    lease_until=bindparam("new_lease_until"))
_RELEASE = update(_CURSORS).where(_CURSORS.c.name == CURSOR,
                                  _CURSORS.c.owner == bindparam("holder")).values(lease_until=None)
_BASELINES = BaselineRow.__table__
# Events of a risk set outside the monitor, and the key of their data holding the new score
# (`MonitorService._replay_override`).
_RISK_OVERRIDES = {ev.RISK_SET: "after", ev.RESPONSE_UNDONE: "risk"}


def _upsert_baselines(insert: Any) -> Any:
    stmt = insert(_BASELINES)
    return stmt.on_conflict_do_update(index_elements=[_BASELINES.c.identity_id], set_={
        "state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at})


# Built once: building and cache-keying a statement costs about as much as running it.
_SAVE_BASELINES = {"sqlite": _upsert_baselines(sqlite_insert),
                   "postgresql": _upsert_baselines(pg_insert)}
_CHUNK = 500  # identities per IN (...) when loading baselines
RISK_CACHE_SECONDS = 2.0  # how long `risk_of` answers a score from memory


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class MonitorService:
    """Feeds the monitor from the audit log; the risk provider the policy engine reads."""

    def __init__(self, clock: Clock, audit: AuditService, identities: IdentityService,
                 readonly: sessionmaker[Session], *, config: MonitorConfig | None = None,
                 thresholds: dict[str, int] | None = None, lease_seconds: float = 10.0) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._clock = clock
        self._audit = audit
        self._readonly = readonly
        self._identities = identities
        self.monitor = Monitor(config)
        self.thresholds = dict(thresholds or {"notify": 40, "require_approval": 60,
                                              "suspend": 85})
        for kind in self.thresholds:
            if kind not in RESPONSE_KINDS:
                raise ValueError(f"unknown response {kind!r}")
        self.token_revokers: list[TokenRevoker] = []
        self.event_hooks: list[EventHook] = []
        self.owner_notifiers: list[OwnerNotifier] = []
        self._lock = threading.Lock()
        self._seq = -1  # the cursor as this process last wrote it
        # Workers on one machine share a node id: each process (each service) has its own.
        self.lease_owner = secrets.token_hex(8)
        self._lease = timedelta(seconds=lease_seconds)
        self._risk_cache: dict[str, tuple[float, float, float]] = {}
        self.wakeup = threading.Event()
        audit.subscribe(lambda _events: self.wakeup.set())

    # -- risk (RiskProvider) ----------------------------------------------------------------

    def risk_needs_io(self, identity_id: str) -> bool:
        """Whether `risk_of(identity_id)` without a session would read the database (its
        cached score is missing or stale)."""
        cached = self._risk_cache.get(identity_id)
        return cached is None or time.monotonic() - cached[2] > RISK_CACHE_SECONDS

    def risk_of(self, identity_id: str, session: Session | None = None) -> int:
        """Current risk 0-100 of an identity, decayed to now (cached for two seconds)."""
        now = self._clock.now().timestamp()
        cached = self._risk_cache.get(identity_id)
        if session is not None or self.risk_needs_io(identity_id) or cached is None:
            if session is not None:
                row = session.get(RiskRow, identity_id)
            else:
                with self._readonly() as s:
                    row = s.get(RiskRow, identity_id)
            cached = (row.score, row.updated_at.timestamp(), time.monotonic()) if row else \
                (0.0, now, time.monotonic())
            self._risk_cache[identity_id] = cached
        score, at, _ = cached
        return round(score * 0.5 ** (max(0.0, now - at) / self.monitor.config.half_life))

    def requires_approval_now(self, identity_id: str) -> bool:
        with self._readonly() as session:
            return self.requires_approval(session, identity_id)

    def approval_required_ids(self) -> set[str]:
        """Every identity under an active "require_approval" response (its own read)."""
        with self._readonly() as session:
            return set(session.scalars(select(ResponseRow.identity_id).where(
                ResponseRow.kind == "require_approval", ResponseRow.status == "active")))

    def requires_approval(self, session: Session, identity_id: str) -> bool:
        return session.scalars(select(ResponseRow.id).where(
            ResponseRow.identity_id == identity_id, ResponseRow.kind == "require_approval",
            ResponseRow.status == "active")).first() is not None

    # -- the stream -------------------------------------------------------------------------

    def _preload(self, session: Session, identities: set[str]) -> None:
        """Put the baselines of `identities` in memory, the stored ones read in one query per
        chunk (not one per identity); an identity without one starts empty."""
        baselines = self.monitor.baselines
        missing = sorted(identities.difference(baselines))
        for i in range(0, len(missing), _CHUNK):
            chunk = missing[i:i + _CHUNK]
            stored = dict(session.execute(select(_BASELINES.c.identity_id, _BASELINES.c.state)
                                          .where(_BASELINES.c.identity_id.in_(chunk))).all())
            for identity in chunk:
                state = stored.get(identity)
                baselines[identity] = Baseline.from_json(state) if state is not None \
                    else Baseline(identity)

    def process(self, session: Session, limit: int = 2000) -> int:
        """Consume up to `limit` new audit events; the caller commits. Returns how many.

        While another process holds the cursor's unexpired lease this returns 0 at once: its
        memory is current and ours is not, so a pass here would reload every risk and
        baseline from the tables for nothing. The process that moves the cursor takes the
        lease with it (`lease_seconds`); an idle holder renews it when half of it is gone.

        Reading the events and learning from them happen in a read-only transaction, outside
        `session`: on SQLite a write transaction holds the database's one write lock, and a
        pass over a second of traffic takes long enough (tens of ms) to stall every token's
        audit commit behind it. `session` only writes the results, starting with moving the
        cursor from where the pass read it: if another process moved it meanwhile, the pass is
        dropped (nothing written, memory reloaded next time) and its events stay with the
        process that took them."""
        with self._lock:
            now = self._clock.now()
            with self._readonly() as reader:
                stored = reader.execute(_READ_CURSOR).first()
                seq, owner, lease_until = stored or (0, None, None)
                if owner != self.lease_owner and lease_until is not None and lease_until > now:
                    return 0  # another process holds the stream: nothing read, no reload
                if seq != self._seq:  # another process moved it: our memory is stale
                    self.monitor = Monitor(self.monitor.config, self.monitor.detectors)
                    for r in reader.scalars(select(RiskRow)):
                        self.monitor.risk.set(r.identity_id, r.score,
                                              r.updated_at.timestamp())
                    self._seq = seq
                records = self._audit.read_stream(reader, after=seq, limit=limit)
                seen = [(r, event_from_row(r)) for r in records]
                events = [e for _, e in seen if e is not None]
                if events:
                    self._preload(reader, {e.identity for e in events} | {ORG})
            lease = {"new_owner": self.lease_owner, "new_lease_until": now + self._lease}
            if not records:
                # Idle: the holder keeps its lease with one write per half lease, not per pass.
                # (Left to lapse, the next event would go to whichever process looks first,
                # and that one reloads everything.) No one else takes an idle stream.
                if owner == self.lease_owner and lease_until is not None and \
                        lease_until - now < self._lease / 2:
                    session.execute(_MOVE_CURSOR, {"old_seq": seq, "new_seq": seq, **lease})
                return 0
            # From here memory runs ahead of the tables: until the writes are done, a failure
            # (or a lost race for the cursor) must make the next pass reload, not learn the
            # same events twice.
            self._seq = -1
            alerts: list[Alert] = []
            overridden: set[str] = set()
            for record, e in seen:
                if record.type in _RISK_OVERRIDES and self._replay_override(record):
                    assert record.subject  # (`_replay_override` replays only for a subject)
                    overridden.add(record.subject)
                if e is not None:
                    alerts.extend(self.monitor.observe(e))
            if stored is None:
                self._create_cursor(session)
            moved = session.execute(_MOVE_CURSOR, {"old_seq": seq,
                                                   "new_seq": records[-1].seq, **lease})
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return 0  # another process took these events; what this pass learnt is dropped
            for hook in self.event_hooks:
                hook(session, records)
            for identity in overridden:  # the table follows, alert or not (`risk_of`)
                self._write_risk(session, identity)
            for alert in alerts:
                self._store_alert(session, alert)
            for identity in {a.identity for a in alerts}:
                self._respond(session, identity, alerts)
            self._save(session)
            self._seq = records[-1].seq
            return len(records)

    def _replay_override(self, record: StreamEvent) -> bool:
        """A risk set outside the monitor (an administrator's override, an undone response)
        was set in the memory of the process that served the request, which need not be the
        one holding the stream: the holder sets it again when the stream reaches its event,
        at its place among the events, or its next alert for that identity would write its
        own older score back. Whether it did (the event carries a score)."""
        value = (record.data or {}).get(_RISK_OVERRIDES[record.type])
        if not record.subject or not isinstance(value, int | float) or isinstance(value, bool):
            return False
        self.monitor.risk.set(record.subject, float(value), record.ts.timestamp())
        return True

    def release(self, session: Session) -> None:
        """Give up the stream's lease, if this process holds it (the caller commits): a
        process that stops hands the stream over at once, not a lease later."""
        with self._lock:
            session.execute(_RELEASE, {"holder": self.lease_owner})

    def _create_cursor(self, session: Session) -> None:
        # Every worker runs this job: the first ones may race to create the row (nobody's
        # lease; the move that follows takes it).
        session.execute(self._insert(session)(_CURSORS).values(
            name=CURSOR, seq=0).on_conflict_do_nothing())

    @staticmethod
    def _insert(session: Session) -> Any:
        return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert

    def _save(self, session: Session) -> None:
        """Write the baselines changed since the last save: one upsert for all of them."""
        now = self._clock.now()
        rows = []
        for identity in self.monitor.dirty:
            b = self.monitor.baselines.get(identity)
            if b is not None:
                rows.append({"identity_id": identity, "state": b.to_json(), "updated_at": now})
        self.monitor.dirty.clear()
        if rows:
            session.execute(_SAVE_BASELINES[session.get_bind().dialect.name], rows)
        if len(self.monitor.baselines) > 50_000:
            self.monitor.baselines.clear()

    def _store_alert(self, session: Session, alert: Alert) -> None:
        row = AlertRow(id=f"alr_{secrets.token_hex(10)}", ts=_dt(alert.ts),
                       identity_id=alert.identity, detector=alert.detector, score=alert.score,
                       summary=alert.summary, event_seq=alert.seq, status="open",
                       data={**alert.data, "risk": alert.risk})
        session.add(row)
        self._write_risk(session, alert.identity)
        self._audit.record(session, ev.ALERT_RAISED, actor=MONITOR_ACTOR,
                           subject=alert.identity, action=alert.detector,
                           reasons=[alert.summary], outcome="success",
                           data={"alert": row.id, "score": alert.score, "risk": alert.risk,
                                 "event_seq": alert.seq})

    def _write_risk(self, session: Session, identity: str) -> None:
        """Store the identity's risk as the monitor's memory has it."""
        raw = self.monitor.risk.raw(identity)
        if raw is None:
            return
        risk = session.get(RiskRow, identity)
        if risk is None:
            session.add(RiskRow(identity_id=identity, score=raw[0], updated_at=_dt(raw[1])))
        else:
            risk.score, risk.updated_at = raw[0], _dt(raw[1])
        self._risk_cache.pop(identity, None)

    # -- responses --------------------------------------------------------------------------

    def _respond(self, session: Session, identity: str, alerts: list[Alert]) -> None:
        mine = [a for a in alerts if a.identity == identity]
        before = mine[0].risk_before
        after = max(a.risk for a in mine)
        for kind, threshold in sorted(self.thresholds.items(), key=lambda kv: kv[1]):
            if before < threshold <= after and not self._active(session, identity, kind):
                self.apply_response(session, identity, kind, threshold, after,
                                    [a.summary for a in mine])

    @staticmethod
    def _active(session: Session, identity: str, kind: str) -> bool:
        return session.scalars(select(ResponseRow.id).where(
            ResponseRow.identity_id == identity, ResponseRow.kind == kind,
            ResponseRow.status == "active")).first() is not None

    def apply_response(self, session: Session, identity: str, kind: str, threshold: int,
                       risk: int, reasons: list[str]) -> ResponseRow | None:
        row_identity = self._identities.find(session, identity)
        now = self._clock.now()
        data: dict[str, Any] = {}
        if kind == "suspend":
            if row_identity is None or row_identity.status != "active":
                return None
            self._identities.suspend(session, identity, actor=MONITOR_ACTOR,
                                     reason=f"risk {risk} reached {threshold}")
            data["tokens_revoked"] = sum(r(session, identity) for r in self.token_revokers)
        elif kind == "notify":
            owner = row_identity.owner_id if row_identity is not None else None
            data["owner"] = owner
            self._audit.record(session, ev.OWNER_NOTIFIED, actor=MONITOR_ACTOR,
                               subject=identity, reasons=reasons[:5],
                               data={"owner": owner, "risk": risk})
        row = ResponseRow(id=f"rsp_{secrets.token_hex(10)}", ts=now, identity_id=identity,
                          kind=kind, threshold=threshold, risk=risk, status="active",
                          data=data, undone_at=None, undone_by=None)
        session.add(row)
        if kind in NOTIFYING:
            owner = row_identity.owner_id if row_identity is not None else None
            notice = {"identity": identity, "response": kind, "response_id": row.id,
                      "risk": risk, "threshold": threshold, "reasons": reasons[:5]}
            for notifier in self.owner_notifiers:
                notifier(session, owner, notice)
        self._audit.record(session, ev.RESPONSE_APPLIED, actor=MONITOR_ACTOR, subject=identity,
                           action=kind, reasons=reasons[:5],
                           data={"response": row.id, "threshold": threshold, "risk": risk,
                                 **data})
        return row

    def undo_response(self, session: Session, response_id: str, *, actor: str,
                      reason: str = "", ctx: Any = None) -> ResponseRow:
        row = session.get(ResponseRow, response_id)
        if row is None:
            raise NotFound(f"response {response_id!r} not found")
        if row.status != "active":
            raise Conflict("this response was already undone", code="already_undone")
        if row.kind == "suspend":
            ident = self._identities.find(session, row.identity_id)
            if ident is not None and ident.status == "suspended":
                self._identities.resume(session, row.identity_id, actor=actor,
                                        reason=reason or f"undo {row.id}", ctx=ctx)
        row.status, row.undone_at, row.undone_by = "undone", self._clock.now(), actor
        # Risk drops below the response's threshold, or the next alert would redo it at once.
        risk = min(self.risk_of(row.identity_id, session), row.threshold - 1)
        self.set_risk(session, row.identity_id, risk)
        self._audit.record(session, ev.RESPONSE_UNDONE, actor=actor, subject=row.identity_id,
                           action=row.kind, ctx=ctx, reasons=[reason] if reason else [],
                           data={"response": row.id, "risk": risk})
        return row

    def set_risk(self, session: Session, identity: str, score: float) -> None:
        self.monitor.risk.set(identity, score, self._clock.now().timestamp())
        self._write_risk(session, identity)

    # -- alerts -----------------------------------------------------------------------------

    def alerts(self, session: Session, *, identity: str | None = None,
               status: str | None = None, detector: str | None = None,
               cursor: str | None = None, limit: int = 50) -> tuple[list[AlertRow], str | None]:
        q = select(AlertRow)
        if identity:
            q = q.where(AlertRow.identity_id == identity)
        if status:
            q = q.where(AlertRow.status == status)
        if detector:
            q = q.where(AlertRow.detector == detector)
        if cursor:
            q = q.where(AlertRow.id < cursor)
        rows = list(session.scalars(q.order_by(AlertRow.ts.desc(), AlertRow.id.desc())
                                    .limit(limit + 1)))
        return rows[:limit], rows[limit - 1].id if len(rows) > limit else None

    def resolve_alert(self, session: Session, alert_id: str, *, actor: str,
                      reason: str = "", ctx: Any = None) -> AlertRow:
        row = session.get(AlertRow, alert_id)
        if row is None:
            raise NotFound(f"alert {alert_id!r} not found")
        if row.status != "open":
            raise Conflict("the alert is already resolved", code="already_resolved")
        row.status, row.resolved_at, row.resolved_by = "resolved", self._clock.now(), actor
        self._audit.record(session, ev.ALERT_RESOLVED, actor=actor, subject=row.identity_id,
                           ctx=ctx, reasons=[reason] if reason else [],
                           data={"alert": row.id})
        return row

    def responses(self, session: Session, *, identity: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[ResponseRow]:
        q = select(ResponseRow)
        if identity:
            q = q.where(ResponseRow.identity_id == identity)
        if status:
            if status not in ("active", "undone"):
                raise ValidationFailed("status must be active or undone")
            q = q.where(ResponseRow.status == status)
        return list(session.scalars(q.order_by(ResponseRow.ts.desc()).limit(limit)))

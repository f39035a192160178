"""Append-only, hash-chained audit log: record, checkpoint, retain (reading: `reader`).

An event recorded with `record` is written in the caller's transaction, so it commits with the
change it records or not at all. Event types on the hot path (token issuance, decisions) take
the group-commit path instead: they are handed to a committer thread when the caller's
transaction commits, and `session.commit()` returns only once they are durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, bindparam, delete, event, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import events as ev
from tessera.audit.chain import (
    CHECKPOINT_TYP,
    canonical_text,
    chain_hash,
    finite_canonical_text,
    hashed_part,
    ts_text,
)
from tessera.audit.groupcommit import GroupCommitter, WriteUnit
from tessera.audit.models import AuditCheckpointRow, AuditEventRow, AuditHeadRow, AuditRetentionRow
from tessera.audit.reader import AuditReader
from tessera.audit.reader import EventQuery as EventQuery
from tessera.audit.reader import StreamEvent as StreamEvent
from tessera.audit.reader import event_dict as event_dict
from tessera.audit.reader import row_dict as row_dict
from tessera.clock import Clock
from tessera.db.fast import FastStatement, JsonbRows, Sent, is_string
from tessera.errors import Conflict, ValidationFailed
from tessera.ids import new_id

log = logging.getLogger("tessera.audit")
Subscriber = Callable[[list[dict[str, Any]]], None]
# A unit hook: (session, [(unit index, that unit's intents)]) -> {unit index: exception}.
UnitHook = Callable[[Session, list[tuple[int, list[Any]]]], dict[int, Exception]]
# A pipelined hook's second half: given the refusals of the hooks before it, {unit index:
# exception} for units it refuses among the others (see `register_hook`).
Settle = Callable[[dict[int, Exception]], dict[int, Exception]]
PipelinedHook = Callable[[Session, list[tuple[int, list[Any]]]], Settle]
SignerFactory = Callable[[], Any]
_INFO_KEY = "tessera_audit"

# Values that look like secrets never enter the log, whatever a caller passes.
_SECRET_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWS / JWT
    re.compile(r"tsr_[a-z]{2,8}_[A-Za-z0-9_-]{8,}"),  # Tessera opaque secrets
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_SECRET_KEYS = {"password", "secret", "client_secret", "access_token", "refresh_token",
                "id_token", "assertion", "client_assertion", "subject_token", "actor_token",
                "private_key", "d"}
REDACTED = "[redacted]"
_SECRET_MARKERS = list(zip(("eyJ", "tsr_", "-----BEGIN "), _SECRET_PATTERNS, strict=True))


def scrub(value: Any, key: str | None = None) -> Any:
    """Replace anything that looks like a token, assertion, key or password."""
    if key is not None and key.lower() in _SECRET_KEYS:
        return REDACTED
    if isinstance(value, str):
        # Each pattern starts with a fixed marker: a substring test (C speed) rules most
        # strings out before any regex runs (a decision batch holds thousands of strings).
        for marker, pattern in _SECRET_MARKERS:
            if marker in value:
                value = pattern.sub(REDACTED, value)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


# The chain append's statements, built once (construction and cache-key generation cost as
# much as running them on SQLite).
_HEAD = AuditHeadRow.__table__
_LOCK_HEAD = FastStatement(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)
                           .with_for_update())
# `data` and `reasons` go in as the chain's canonical JSON text (see `_append_batch`).
_INSERT_EVENTS = FastStatement(insert(AuditEventRow.__table__), encoded=("data", "reasons"))
# The key under which `event` keeps the canonical JSON text of the event's `data`.
DATA_JSON = "data_json"


_MOVE_HEAD = FastStatement(update(_HEAD).where(_HEAD.c.id == 1).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash")))
_EVENT_COLUMNS = [c.name for c in AuditEventRow.__table__.columns]
_TEXT_COLUMNS = [c.name for c in AuditEventRow.__table__.columns if is_string(c.type)]
_EVENT_ROWS = JsonbRows(AuditEventRow.__table__, _EVENT_COLUMNS)
_ZERO = timedelta(0)
# (a TypeDecorator hands `length` on to the String type it decorates)
_LIMITS = {c.name: getattr(c.type, "length")
           for c in AuditEventRow.__table__.columns if is_string(c.type)}


def _append_statement() -> FastStatement:
    """PostgreSQL: a batch's events and the head's move in one statement, the events' values
    in one jsonb parameter (`JsonbRows`).

    Inserting a batch of 8 events one row each (`executemany`, 16 parameters a row) and moving
    the head took ~490 us of client CPU a batch. The JSON columns (json, which keeps text as
    given) get their canonical text, passed as a JSON string, and `ts` the chain's text of it
    (UTC), so a row stores exactly what was hashed."""
    return FastStatement(text(
        "WITH moved AS (UPDATE audit_head SET seq = :new_seq, hash = :new_hash WHERE id = 1) "
        f"INSERT INTO audit_events ({', '.join(_EVENT_COLUMNS)}) " + _EVENT_ROWS.sql
    ).bindparams(bindparam("new_seq", type_=BigInteger()), bindparam("new_hash"),
                 bindparam("rows")))


_APPEND_PG = _append_statement()
_CHECKPOINT_COLUMNS = ("seq", "hash", "ts", "kid", "jws")
_INSERT_CHECKPOINT = FastStatement(text(
    f"INSERT INTO audit_checkpoints ({', '.join(_CHECKPOINT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _CHECKPOINT_COLUMNS)}) "
    "ON CONFLICT (seq) DO NOTHING").bindparams(
        *(bindparam(c, type_=AuditCheckpointRow.__table__.c[c].type)
          for c in _CHECKPOINT_COLUMNS)))


@dataclass
class RequestContext:
    """Who asked, from where, under which request id: stamped on every event."""

    request_id: str | None = None
    source: str | None = None
    actor: str | None = None


@dataclass
class AuditOptions:
    checkpoint_every: int = 1000
    group_commit: bool = True
    group_types: tuple[str, ...] = ("oauth.token.issued", "oauth.token.refused",
                                    "authz.decision.")


def _fit(value: Any, limit: int | None) -> Any:
    """A field of an event as its column can store it. The group committer writes the events
    of many requests in one transaction, so one value the database refuses (longer than its
    column, a NUL character on PostgreSQL, a lone surrogate nothing can encode) would fail
    every request of the batch: such a value is made storable here, for the event it belongs
    to (cut to the column's length, ending in an ellipsis; NUL and lone surrogates replaced)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode()  # lone surrogates become "?"
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if limit is not None and len(value) > limit:
        value = value[:limit - 1] + "\u2026"
    return value


class AuditService(AuditReader):
    """Writes events, signs checkpoints, applies retention and verifies the chain."""

    def __init__(self, clock: Clock, node_id: str, options: AuditOptions | None = None) -> None:
        self._clock = clock
        self._node_id = node_id
        self.options = options or AuditOptions()
        self._signer: SignerFactory | None = None
        self._committer: GroupCommitter | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._subscribers: list[Subscriber] = []
        self._hooks: dict[str, tuple[UnitHook | PipelinedHook, bool]] = {}

    # -- wiring -----------------------------------------------------------------------------

    def use_signer(self, signer: SignerFactory) -> None:
        """Sign checkpoints with the key `signer()` returns (the server's active key)."""
        self._signer = signer

    def use_group_commit(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        if self.options.group_commit and self._committer is None:
            self._committer = GroupCommitter(sessions, self.apply_units,
                                             after_commit=self._notify)

    def register_hook(self, name: str, hook: UnitHook | PipelinedHook, *,
                      pipelined: bool = False) -> None:
        """Let `WriteUnit`s carry intents under `name`; hooks run in registration order, each
        on the units no earlier hook refused, before the events are appended.

        A `pipelined` hook only sends its statements (`FastStatement.send`) and returns a
        `Settle`, called once their results are wanted: the statements of consecutive
        pipelined hooks and the chain head's lock then reach PostgreSQL together, in one round
        trip (`tessera.db.pipeline`). Its statements are sent before the refusals of the
        pipelined hooks before it are known, so its items may include units those refuse, and
        its `Settle` must leave them as if it had never seen them (e.g. undo their writes);
        it only reports refusals of units not in the refusals it is given."""
        self._hooks[name] = (hook, pipelined)

    def apply_units(self, session: Session, units: list[WriteUnit]
                    ) -> list[list[dict[str, Any]] | Exception]:
        """Write a batch of units in `session` (the caller commits): run each hook on the
        intents of the units still standing, then append the events of those that are."""
        refused: dict[int, Exception] = {}
        settles: list[Settle] = []

        def settle() -> None:
            for fn in settles:
                for index, exc in fn(refused).items():
                    refused.setdefault(index, exc)
            settles.clear()

        unknown = {n for u in units for n in u.intents} - set(self._hooks)
        if unknown:  # a programming error: nothing of the batch may be half-applied
            raise RuntimeError(f"no unit hook registered for {sorted(unknown)}")
        for name, (hook, pipelined) in self._hooks.items():
            if not any(u.intents.get(name) for u in units):
                continue
            if not pipelined:
                settle()  # a plain hook sees only the units every earlier hook let through
            items = [(i, u.intents[name]) for i, u in enumerate(units)
                     if i not in refused and u.intents.get(name)]
            if not items:
                continue
            if pipelined:
                settles.append(hook(session, items))  # type: ignore[arg-type]
            else:
                refused.update(hook(session, items))  # type: ignore[arg-type]
        # The head's lock goes with the pipelined hooks' statements, read after them.
        head = _LOCK_HEAD.send(session) if any(u.events for u in units) else None
        settle()
        events = [e for i, u in enumerate(units) if i not in refused for e in u.events]
        if events:
            written = self._append_batch(session, events, head)
        else:
            written = []
            if head is not None:
                head.rows()  # every unit was refused: the lock's result is not needed
        out: list[list[dict[str, Any]] | Exception] = []
        k = 0
        for i, u in enumerate(units):
            if i in refused:
                out.append(refused[i])
            else:
                out.append(written[k:k + len(u.events)])
                k += len(u.events)
        return out

    def submit_unit(self, unit: WriteUnit) -> asyncio.Future[list[dict[str, Any]]] | None:
        """Hand `unit` to the group committer from a coroutine (None without a committer);
        await the future: it resolves once the unit is durable, or with the refusal."""
        return self._committer.submit_async(unit) if self._committer is not None else None

    def commit_unit(self, unit: WriteUnit, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Write `unit` durably, through the group committer when there is one; raises the
        exception a hook refused it with."""
        if self._committer is not None:
            return self._committer.submit(unit).result(timeout)
        if self._sessions is None:
            raise RuntimeError("the audit service has no session factory")
        with self._sessions() as session:
            (result,) = self.apply_units(session, [unit])
            if isinstance(result, Exception):
                session.rollback()
                raise result
            session.commit()
        if result:
            self._notify(result)
        return result

    def subscribe(self, fn: Subscriber) -> None:
        """Call `fn` with each batch of events after it commits (never inside a transaction)."""
        self._subscribers.append(fn)

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        for fn in self._subscribers:
            closer = getattr(fn, "close", None)
            if callable(closer):
                closer()

    @property
    def committer(self) -> GroupCommitter | None:
        return self._committer

    def _notify(self, events: list[dict[str, Any]]) -> None:
        for fn in self._subscribers:
            try:
                fn(events)
            except Exception:
                log.exception("audit subscriber failed")

    # -- writing ----------------------------------------------------------------------------

    def event(self, type: str, *, outcome: str = "success", actor: str | None = None,
              subject: str | None = None, action: str | None = None,
              resource: str | None = None, reasons: Iterable[str] = (),
              ctx: RequestContext | None = None,
              data: dict[str, Any] | None = None) -> dict[str, Any]:
        """An event as `record` writes it, for `record_built` or a `WriteUnit`: `data` as it
        reads back (its canonical JSON decoded), and under `DATA_JSON` that object with its
        JSON text, which the `data` column stores (one encoding of the data, not one more per
        write) as long as the event's `data` is still that object. Raises ValueError for data
        the chain cannot hash."""
        ctx = ctx or RequestContext()
        # NaN or an infinity would fail every request of a PostgreSQL batch: refused here.
        data_json = finite_canonical_text(scrub(data or {}))
        data_json.encode()  # text the chain cannot hash (a lone surrogate) fails here, not
        # in the committer, where it would fail every request of the batch
        decoded = json.loads(data_json)
        now = self._clock.now()
        # 80 random bits: events are made thousands of times a second, on several nodes.
        return {"id": new_id("evt", now, 10), "ts": now, "type": type,
                "actor": _fit(actor if actor is not None else ctx.actor, _LIMITS["actor"]),
                "subject": _fit(subject, _LIMITS["subject"]),
                "action": _fit(scrub(action), _LIMITS["action"]),
                "resource": _fit(scrub(resource), _LIMITS["resource"]), "outcome": outcome,
                "reasons": [_fit(scrub(str(r)), None) for r in reasons],
                "request_id": _fit(ctx.request_id, _LIMITS["request_id"]),
                "source": _fit(ctx.source, _LIMITS["source"]),
                "node_id": self._node_id, "data": decoded, DATA_JSON: (decoded, data_json)}

    def record(self, session: Session, type: str, *, outcome: str = "success",
               actor: str | None = None, subject: str | None = None, action: str | None = None,
               resource: str | None = None, reasons: Iterable[str] = (),
               ctx: RequestContext | None = None,
               data: dict[str, Any] | None = None) -> None:
        self.record_built(session, self.event(
            type, outcome=outcome, actor=actor, subject=subject, action=action,
            resource=resource, reasons=reasons, ctx=ctx, data=data))

    def record_built(self, session: Session, evt: dict[str, Any]) -> None:
        """`record` for an event made earlier with `event`."""
        state = session.info.setdefault(_INFO_KEY, {"service": self, "group": [],
                                                    "written": []})
        if self._committer is not None and evt["type"].startswith(self.options.group_types):
            state["group"].append(evt)
            return
        state["written"].extend(self._append_batch(session, [evt]))

    def _append_batch(self, session: Session, events: list[dict[str, Any]],
                      head: Sent | None = None) -> list[dict[str, Any]]:
        # INVARIANT: the head row is locked for the rest of the transaction, so appends from
        # concurrent transactions (and nodes) form one chain. SQLite gets the same effect
        # from BEGIN IMMEDIATE. `head`: the lock, already sent by the caller.
        # Core statements, not ORM objects: this is on every token's and decision's path.
        ((seq, prev),) = (head or _LOCK_HEAD.send(session)).rows()
        first = seq
        written: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []  # SQLite: one dict per event, for `run_many`
        pg_rows: list[list[Any]] = []  # PostgreSQL: one list per event, for `JsonbRows`
        pg = session.get_bind().dialect.name == "postgresql"
        for evt in events:
            if evt["ts"].utcoffset() != _ZERO:  # `ts_text` (hashed, and stored) writes UTC
                raise ValueError("audit event timestamps must be in UTC")
            seq += 1
            out = hashed_part(evt)
            out["seq"] = seq
            out["ts"] = ts_text(evt["ts"])
            digest = chain_hash(prev, out)
            # The JSON columns store the canonical text (SQLAlchemy's JSON type would encode
            # the same values once more, differently spaced; None is JSON null either way), so
            # they read back as hashed: for `data`, the text `event` kept, as long as `data`
            # is still the object decoded from it.
            kept = evt.get(DATA_JSON)
            data_json = kept[1] if kept is not None and kept[0] is evt["data"] \
                else canonical_text(out["data"])
            row = {**evt, "seq": seq, "prev_hash": prev, "hash": digest,
                   "data": data_json, "reasons": canonical_text(out["reasons"])}
            if pg:  # (the jsonb parameter refuses what is not text in a text column)
                row["ts"] = out["ts"]
                pg_rows.append([row[name] for name in _EVENT_COLUMNS])
            else:
                for name in _TEXT_COLUMNS:  # stored, it must read back as what was hashed
                    if row[name] is not None and type(row[name]) is not str:
                        raise TypeError(f"{name} must be a string")
                rows.append(row)
            out["prev_hash"], out["hash"] = prev, digest
            written.append(out)
            prev = digest
        if pg:
            _APPEND_PG.run(session, {"rows": _EVENT_ROWS.param(pg_rows), "new_seq": seq,
                                     "new_hash": prev})
        else:
            _INSERT_EVENTS.run_many(session, rows)
            _MOVE_HEAD.run(session, {"new_seq": seq, "new_hash": prev})
        every = self.options.checkpoint_every
        if self._signer is not None and every > 0 and first // every != seq // every:
            try:
                checkpoint = self._signed_checkpoint(seq, prev)
            except Exception:  # the key (an HSM, say) failed: the batch commits unsigned
                log.warning("audit checkpoint at %s not signed", seq, exc_info=True)
            else:
                self._write_checkpoint(session, checkpoint)
        return written

    @staticmethod
    def _write_checkpoint(session: Session, row: AuditCheckpointRow) -> None:
        """A driver-level statement (in a committer batch it rides PostgreSQL's pipeline, see
        tessera.db.pipeline); another node may have signed this head already."""
        _INSERT_CHECKPOINT.run(session, {column: getattr(row, column)
                                         for column in _CHECKPOINT_COLUMNS})

    def _signed_checkpoint(self, seq: int, hash: str) -> AuditCheckpointRow:
        from tessera.keys.jws import sign_compact

        if self._signer is None:
            raise RuntimeError("no checkpoint signer configured")
        signer = self._signer()
        now = self._clock.now()
        jws = sign_compact(signer, {"seq": seq, "hash": hash, "iat": int(now.timestamp()),
                                    "node": self._node_id}, typ=CHECKPOINT_TYP)
        return AuditCheckpointRow(seq=seq, hash=hash, ts=now, kid=signer.kid, jws=jws)


    def checkpoint(self, session: Session) -> AuditCheckpointRow | None:
        """Sign the current head unless it is already checkpointed (the periodic job)."""
        if self._signer is None:
            return None
        head_t = AuditHeadRow.__table__
        seq, digest = session.execute(select(head_t.c.seq, head_t.c.hash)
                                      .where(head_t.c.id == 1).with_for_update()).one()
        last = session.scalar(select(func.max(AuditCheckpointRow.seq)))
        if seq == 0 or (last is not None and last >= seq):
            return None
        row = self._signed_checkpoint(seq, digest)
        self._write_checkpoint(session, row)
        return row

    # -- retention --------------------------------------------------------------------------

    def apply_retention(self, session: Session, before: datetime, *, actor: str | None,
                        ctx: RequestContext | None = None) -> dict[str, Any]:
        """Delete events older than `before` up to the newest checkpoint that covers them.

        The chain then starts from that signed checkpoint, which is kept, so the rest still
        verifies; the operation itself is an audit event.
        """
        if before > self._clock.now():
            raise ValidationFailed("retention cannot remove events from the future")
        cp = session.scalars(
            select(AuditCheckpointRow).join(AuditEventRow, AuditEventRow.seq ==
                                            AuditCheckpointRow.seq)
            .where(AuditEventRow.ts < before).order_by(AuditCheckpointRow.seq.desc()).limit(1)
        ).first()
        base_seq, _ = self.base(session)
        if cp is None or cp.seq <= base_seq:
            raise Conflict("no signed checkpoint older than that time: nothing can be removed "
                           "without breaking the chain", code="no_checkpoint")
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL tessera.audit_retention = 'on'"))
        deleted = session.execute(delete(AuditEventRow).where(AuditEventRow.seq <= cp.seq))
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL tessera.audit_retention = 'off'"))
        count = int(deleted.rowcount)  # type: ignore[attr-defined]
        session.add(AuditRetentionRow(ts=self._clock.now(), actor=actor, base_seq=cp.seq,
                                      base_hash=cp.hash, deleted=count))
        result = {"base_seq": cp.seq, "deleted": count, "before": ts_text(before)}
        self.record(session, ev.AUDIT_RETENTION_APPLIED, actor=actor, ctx=ctx,
                    resource="audit:events", data=result)
        return result


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    state = session.info.pop(_INFO_KEY, None)
    if not state:
        return
    service: AuditService = state["service"]
    if state["group"]:
        committer = service.committer
        if committer is None:  # closed meanwhile: nothing may be lost silently
            raise RuntimeError("audit committer closed before the event was written")
        # Blocks until the committer's transaction holding these events has committed.
        committer.append_now(state["group"])
    if state["written"]:
        service._notify(state["written"])


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_INFO_KEY, None)


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_INFO_KEY, None)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: Any) -> None:
    # A session closed without committing forgets its pending events (after_commit has
    # already taken them when the transaction committed).
    if transaction.parent is None:
        session.info.pop(_INFO_KEY, None)

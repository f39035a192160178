"""Reading the audit log: search, the event stream, the chain's head and base, checkpoints,
and verification."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from tessera.audit.chain import (
    GENESIS,
    Checkpoint,
    VerifyReport,
    hashed_part,
    ts_text,
    verify_chain,
)
from tessera.audit.models import AuditCheckpointRow, AuditEventRow, AuditHeadRow, AuditRetentionRow


def _after(*columns: Any) -> Any:
    """`columns` of up to :batch events after sequence number :after, in order."""
    seq = AuditEventRow.__table__.c.seq
    return select(*columns).where(seq > bindparam("after")).order_by(seq).limit(
        bindparam("batch"))


_EVENTS_AFTER = _after(AuditEventRow.__table__)


class StreamEvent(NamedTuple):
    """An audit event as a consumer of the stream (the monitor, its hooks) reads it: the
    fields it acts on, not the chain's (`read_stream`)."""

    seq: int
    ts: datetime
    type: str
    actor: str | None
    subject: str | None
    action: str | None
    resource: str | None
    outcome: str
    request_id: str | None
    source: str | None
    data: dict[str, Any]


_STREAM_AFTER = _after(*(AuditEventRow.__table__.c[name] for name in StreamEvent._fields))
@dataclass
class EventQuery:
    after: int = 0
    limit: int = 100
    type: str | None = None
    identity: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None


def row_dict(row: AuditEventRow | Row[*tuple[Any, ...]]) -> dict[str, Any]:
    """An event as the chain hashes it, from its ORM object or a Core row of its table."""
    out = hashed_part({name: getattr(row, name) for name in
                       ("seq", "id", "ts", "type", "actor", "subject", "action", "resource",
                        "outcome", "reasons", "request_id", "source", "node_id", "data")})
    out["ts"] = ts_text(row.ts)
    out["prev_hash"], out["hash"] = row.prev_hash, row.hash
    return out


def event_dict(row: AuditEventRow) -> dict[str, Any]:
    """The hashed fields of a row, as plain JSON values."""
    return hashed_part(row_dict(row))


class AuditReader:
    """The audit log's read side (mixed into `AuditService`)."""

    def search(self, session: Session, q: EventQuery) -> list[AuditEventRow]:
        stmt = select(AuditEventRow).where(AuditEventRow.seq > q.after)
        if q.type:
            if q.type.endswith("*"):
                stmt = stmt.where(AuditEventRow.type.startswith(q.type[:-1], autoescape=True))
            else:
                stmt = stmt.where(AuditEventRow.type == q.type)
        if q.identity:
            # Same rows as subject = q OR actor = q; the second term states the actor
            # index's condition, without which neither database can use that partial index.
            stmt = stmt.where((AuditEventRow.subject == q.identity) |
                              ((AuditEventRow.actor == q.identity) &
                               AuditEventRow.actor.is_distinct_from(AuditEventRow.subject)))
        if q.outcome:
            stmt = stmt.where(AuditEventRow.outcome == q.outcome)
        if q.since:
            stmt = stmt.where(AuditEventRow.ts >= q.since)
        if q.until:
            stmt = stmt.where(AuditEventRow.ts < q.until)
        if q.request_id:
            stmt = stmt.where(AuditEventRow.request_id == q.request_id)
        return list(session.scalars(stmt.order_by(AuditEventRow.seq).limit(q.limit)))

    def events(self, session: Session, *, after: int = 0, limit: int = 100,
               type: str | None = None, subject: str | None = None,
               outcome: str | None = None) -> list[AuditEventRow]:
        return self.search(session, EventQuery(after=after, limit=limit, type=type,
                                               identity=subject, outcome=outcome))

    @staticmethod
    def head(session: Session) -> tuple[int, str]:
        head = session.scalars(select(AuditHeadRow).where(AuditHeadRow.id == 1)).one()
        return head.seq, head.hash

    @staticmethod
    def base(session: Session) -> tuple[int, str]:
        row = session.scalars(select(AuditRetentionRow)
                              .order_by(AuditRetentionRow.base_seq.desc()).limit(1)).first()
        return (row.base_seq, row.base_hash) if row else (0, GENESIS)

    @staticmethod
    def checkpoints(session: Session) -> list[Checkpoint]:
        return [Checkpoint(r.seq, r.hash, r.jws) for r in session.scalars(
            select(AuditCheckpointRow).order_by(AuditCheckpointRow.seq))]

    @staticmethod
    def iter_rows(session: Session, batch: int = 2000, after: int = 0
                  ) -> Iterator[dict[str, Any]]:
        last = after
        while True:
            # Core rows, not ORM objects (row_dict reads attributes, which both have): the
            # monitor reads every event this way, so this runs once per token issued.
            rows = session.execute(_EVENTS_AFTER, {"after": last, "batch": batch}).all()
            if not rows:
                return
            for row in rows:
                yield row_dict(row)
            last = rows[-1].seq

    @staticmethod
    def read_stream(session: Session, after: int = 0, limit: int = 2000) -> list[StreamEvent]:
        """Up to `limit` events after sequence number `after`, in order (`ts` an aware
        datetime, `data` a dict), for consumers of the stream; `iter_rows` gives every hashed
        field as hashed, for verification and export. Named tuples, not Core rows: reading
        an attribute of a Core row costs more than making the tuple."""
        return list(map(StreamEvent._make, session.execute(
            _STREAM_AFTER, {"after": after, "batch": limit}).all()))

    @classmethod
    def verify(cls, session: Session, jwks: dict[str, Any] | None = None) -> VerifyReport:
        """Verify every stored event, the head, and each checkpoint against `jwks`."""
        return verify_chain(cls.iter_rows(session), head=cls.head(session),
                            checkpoints=cls.checkpoints(session), jwks=jwks,
                            base=cls.base(session))

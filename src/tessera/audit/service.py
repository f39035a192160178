"""Append-only, hash-chained audit log.

Each event's hash is SHA-256 over the previous event's hash and a canonical encoding of the
event (JSON with sorted keys, no insignificant white space, UTF-8). An event is written in the
caller's transaction, so it commits with the change it records or not at all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.audit.models import AuditEventRow, AuditHeadRow
from tessera.clock import Clock

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "id", "ts", "type", "actor", "subject", "action", "resource",
                 "outcome", "reasons", "request_id", "source", "node_id", "data")


def canonical(event: dict[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def event_dict(row: AuditEventRow) -> dict[str, Any]:
    """The hashed fields of a row, as plain JSON values."""
    out = {name: getattr(row, name) for name in HASHED_FIELDS}
    out["ts"] = _ts(row.ts)
    return out


def _ts(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(event)).hexdigest()


@dataclass
class RequestContext:
    """Who asked, from where, under which request id: stamped on every event."""

    request_id: str | None = None
    source: str | None = None
    actor: str | None = None


class AuditService:
    """Writes events into the caller's transaction and verifies the chain."""

    def __init__(self, clock: Clock, node_id: str) -> None:
        self._clock = clock
        self._node_id = node_id

    def record(self, session: Session, type: str, *, outcome: str = "success",
               actor: str | None = None, subject: str | None = None, action: str | None = None,
               resource: str | None = None, reasons: Iterable[str] = (),
               ctx: RequestContext | None = None,
               data: dict[str, Any] | None = None) -> AuditEventRow:
        # INVARIANT: the head row is locked for the rest of the transaction, so appends from
        # concurrent transactions (and nodes) form one chain. SQLite gets the same effect
        # from BEGIN IMMEDIATE.
        head = session.scalars(
            select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()).one()
        ctx = ctx or RequestContext()
        ts = self._clock.now()
        row = AuditEventRow(
            seq=head.seq + 1, id=f"evt_{secrets.token_hex(10)}", ts=ts, type=type,
            actor=actor if actor is not None else ctx.actor, subject=subject, action=action,
            resource=resource, outcome=outcome, reasons=list(reasons),
            request_id=ctx.request_id, source=ctx.source, node_id=self._node_id,
            data=json.loads(canonical(data or {})), prev_hash=head.hash, hash="")
        row.hash = chain_hash(head.hash, event_dict(row))
        session.add(row)
        head.seq = row.seq
        head.hash = row.hash
        return row

    def events(self, session: Session, *, after: int = 0, limit: int = 100,
               type: str | None = None, subject: str | None = None,
               outcome: str | None = None) -> list[AuditEventRow]:
        q = select(AuditEventRow).where(AuditEventRow.seq > after)
        if type:
            q = q.where(AuditEventRow.type == type)
        if subject:
            q = q.where((AuditEventRow.subject == subject) | (AuditEventRow.actor == subject))
        if outcome:
            q = q.where(AuditEventRow.outcome == outcome)
        return list(session.scalars(q.order_by(AuditEventRow.seq).limit(limit)))

    @staticmethod
    def verify(session: Session, batch: int = 2000) -> VerifyReport:
        return verify_rows(_iter_rows(session, batch),
                           session.scalars(select(AuditHeadRow)).one_or_none())


def _iter_rows(session: Session, batch: int) -> Iterator[AuditEventRow]:
    last = 0
    while True:
        rows = session.scalars(select(AuditEventRow).where(AuditEventRow.seq > last)
                               .order_by(AuditEventRow.seq).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    head_seq: int
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_broken(self) -> dict[str, Any] | None:
        return self.problems[0] if self.problems else None


def verify_rows(rows: Iterable[AuditEventRow], head: AuditHeadRow | None) -> VerifyReport:
    """Walk the chain; report the first broken link (and stop there)."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    problems: list[dict[str, Any]] = []
    for row in rows:
        if row.seq != expected_seq:
            kind = "deleted" if row.seq > expected_seq else "reordered"
            problems.append({"seq": expected_seq, "problem": kind,
                             "detail": f"expected event {expected_seq}, found {row.seq}"})
            break
        if row.prev_hash != prev_hash:
            problems.append({"seq": row.seq, "problem": "broken_link",
                             "detail": "prev_hash does not match the previous event's hash"})
            break
        if chain_hash(prev_hash, event_dict(row)) != row.hash:
            problems.append({"seq": row.seq, "problem": "modified",
                             "detail": "event content does not match its hash"})
            break
        prev_hash, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
    head_seq = head.seq if head else 0
    if not problems and head is not None and (head.seq != checked or head.hash != prev_hash):
        problems.append({"seq": checked + 1 if head.seq > checked else head.seq,
                         "problem": "truncated" if head.seq > checked else "head_mismatch",
                         "detail": f"chain head says {head.seq} events, found {checked}"})
    return VerifyReport(ok=not problems, checked=checked, head_seq=head_seq, problems=problems)

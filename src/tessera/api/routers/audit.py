"""Read, export, checkpoint, retain and verify the audit log through the API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tessera.api.deps import AdminSubject, DbSession, ServicesDep, request_context
from tessera.audit import EventQuery
from tessera.audit import events as ev
from tessera.audit.export import export_lines
from tessera.audit.models import AuditEventRow
from tessera.db import make_session_factory
from tessera.errors import ValidationFailed

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def event_json(r: AuditEventRow) -> dict[str, Any]:
    return {"seq": r.seq, "id": r.id, "ts": r.ts.isoformat(), "type": r.type,
            "actor": r.actor, "subject": r.subject, "action": r.action,
            "resource": r.resource, "outcome": r.outcome, "reasons": r.reasons,
            "request_id": r.request_id, "source": r.source, "node_id": r.node_id,
            "data": r.data, "prev_hash": r.prev_hash, "hash": r.hash}


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValidationFailed(f"{name} must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value


@router.get("/events")
def events(session: DbSession, services: ServicesDep, _admin: AdminSubject,
           after: Annotated[int, Query(ge=0, description="cursor: last seq seen")] = 0,
           cursor: Annotated[str | None, Query(max_length=20, pattern=r"^\d+$")] = None,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           type: Annotated[str | None, Query(max_length=64, description="exact, or prefix*")
                           ] = None,
           subject: Annotated[str | None, Query(max_length=200)] = None,
           identity: Annotated[str | None, Query(max_length=200)] = None,
           outcome: Annotated[str | None, Query(max_length=16)] = None,
           since: datetime | None = None, until: datetime | None = None,
           request_id: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    q = EventQuery(after=int(cursor) if cursor else after, limit=limit, type=type,
                   identity=identity or subject, outcome=outcome,
                   since=_aware(since, "since"), until=_aware(until, "until"),
                   request_id=request_id)
    rows = services.audit.search(session, q)
    return {"items": [event_json(r) for r in rows],
            "next_cursor": str(rows[-1].seq) if len(rows) == limit else None,
            "last_seq": rows[-1].seq if rows else q.after}


@router.get("/export")
def export(request: Request, session: DbSession, services: ServicesDep,
           admin: AdminSubject) -> StreamingResponse:
    """The whole log as JSON Lines, verifiable offline with the JWKS (see `audit verify`)."""
    services.audit.checkpoint(session)
    services.audit.record(session, ev.AUDIT_EXPORTED, actor=admin,
                          ctx=request_context(request, admin), resource="audit:events")
    session.commit()
    # A read-only session: on SQLite a long export must not hold the write lock.
    readonly = make_session_factory(services.engine, readonly=True)

    def body() -> Iterator[bytes]:
        with readonly() as ro:
            for line in export_lines(ro, services.clock, services.keys.jwks()):
                yield (line + "\n").encode()

    return StreamingResponse(body(), media_type="application/jsonl",
                             headers={"Content-Disposition": 'attachment; filename='
                                                             '"tessera-audit.jsonl"'})


@router.get("/verify")
def verify(services: ServicesDep, _admin: AdminSubject) -> dict[str, Any]:
    # Read-only: walking a long log must not hold SQLite's write lock.
    with make_session_factory(services.engine, readonly=True)() as session:
        return services.audit.verify(session, jwks=services.keys.jwks()).as_dict()


@router.post("/checkpoints", status_code=201)
def checkpoint(session: DbSession, services: ServicesDep, _admin: AdminSubject
               ) -> dict[str, Any]:
    """Sign the current chain head now (the periodic job does this every T seconds)."""
    row = services.audit.checkpoint(session)
    session.commit()
    head = services.audit.head(session)
    return {"seq": head[0], "hash": head[1], "created": row is not None}


@router.get("/checkpoints")
def checkpoints(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                after: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    cps = [cp for cp in services.audit.checkpoints(session) if cp.seq > after][:limit]
    return {"items": [{"seq": c.seq, "hash": c.hash, "jws": c.jws} for c in cps],
            "next_cursor": str(cps[-1].seq) if len(cps) == limit else None}


class RetentionRequest(BaseModel):
    before: datetime = Field(description="remove events older than this (RFC 3339, with zone)")


@router.post("/retention")
def retention(body: RetentionRequest, request: Request, session: DbSession,
              services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    """Remove old events up to a signed checkpoint; the operation is itself audited."""
    if body.before.tzinfo is None:
        raise ValidationFailed("before must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    result = services.audit.apply_retention(session, body.before, actor=admin,
                                            ctx=request_context(request, admin))
    session.commit()
    return result

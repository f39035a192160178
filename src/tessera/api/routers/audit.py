"""Read the audit log and check its chain through the API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from tessera.api.deps import AdminSubject, DbSession, ServicesDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/events")
def events(session: DbSession, services: ServicesDep, _admin: AdminSubject,
           after: Annotated[int, Query(ge=0)] = 0,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           type: Annotated[str | None, Query(max_length=64)] = None,
           subject: Annotated[str | None, Query(max_length=200)] = None,
           outcome: Annotated[str | None, Query(max_length=16)] = None) -> dict[str, Any]:
    rows = services.audit.events(session, after=after, limit=limit, type=type,
                                 subject=subject, outcome=outcome)
    items = [{"seq": r.seq, "id": r.id, "ts": r.ts.isoformat(), "type": r.type,
              "actor": r.actor, "subject": r.subject, "action": r.action,
              "resource": r.resource, "outcome": r.outcome, "reasons": r.reasons,
              "request_id": r.request_id, "source": r.source, "node_id": r.node_id,
              "data": r.data, "hash": r.hash} for r in rows]
    return {"items": items, "next_cursor": str(rows[-1].seq) if len(rows) == limit else None}


@router.get("/verify")
def verify(session: DbSession, services: ServicesDep, _admin: AdminSubject) -> dict[str, Any]:
    report = services.audit.verify(session)
    return {"ok": report.ok, "checked": report.checked, "head_seq": report.head_seq,
            "problems": report.problems}

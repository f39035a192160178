"""Alerts, risk scores, automatic responses and CAEP subscriptions (management API)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from tessera.api.deps import AdminSubject, DbSession, ServicesDep, request_context
from tessera.audit import events as ev
from tessera.container import Services
from tessera.errors import NotFound
from tessera.monitor.caep import CaepService
from tessera.monitor.service import MonitorService

router = APIRouter(tags=["monitor"])


def _monitor(services: Services) -> MonitorService:
    if services.monitor is None:
        raise NotFound("monitoring is not enabled")
    return services.monitor


def _caep(services: Services) -> CaepService:
    if services.caep is None:
        raise NotFound("continuous access evaluation is not enabled")
    return services.caep


class Reason(BaseModel):
    reason: str = Field("", max_length=500)


@router.get("/v1/alerts")
def list_alerts(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                identity: Annotated[str | None, Query(max_length=200)] = None,
                status: Literal["open", "resolved"] | None = None,
                detector: Annotated[str | None, Query(max_length=64)] = None,
                cursor: Annotated[str | None, Query(max_length=40)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    rows, next_cursor = _monitor(services).alerts(session, identity=identity, status=status,
                                                  detector=detector, cursor=cursor,
                                                  limit=limit)
    return {"items": [{"id": r.id, "ts": r.ts.isoformat(), "identity": r.identity_id,
                       "detector": r.detector, "score": r.score, "summary": r.summary,
                       "event_seq": r.event_seq, "status": r.status, "data": r.data,
                       "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
                       "resolved_by": r.resolved_by} for r in rows],
            "next_cursor": next_cursor}


@router.post("/v1/alerts/{alert_id}/resolve")
def resolve_alert(alert_id: str, request: Request, session: DbSession, services: ServicesDep,
                  admin: AdminSubject, body: Reason | None = None) -> dict[str, Any]:
    row = _monitor(services).resolve_alert(session, alert_id, actor=admin,
                                           reason=body.reason if body else "",
                                           ctx=request_context(request, admin))
    session.commit()
    return {"id": row.id, "status": row.status}


@router.get("/v1/risk/{identity_id}")
def risk(identity_id: str, session: DbSession, services: ServicesDep,
         _admin: AdminSubject) -> dict[str, Any]:
    monitor = _monitor(services)
    ident = services.identities.get(session, identity_id)
    responses = monitor.responses(session, identity=ident.id, status="active")
    return {"identity": ident.id, "risk": monitor.risk_of(ident.id, session),
            "requires_approval": monitor.requires_approval(session, ident.id),
            "active_responses": [{"id": r.id, "kind": r.kind, "threshold": r.threshold}
                                 for r in responses],
            "thresholds": monitor.thresholds}


class RiskSet(BaseModel):
    risk: int = Field(ge=0, le=100)
    reason: str = Field("", max_length=500)


@router.put("/v1/risk/{identity_id}")
def set_risk(identity_id: str, body: RiskSet, request: Request, session: DbSession,
             services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    """An administrator's override (e.g. after investigating); recorded in the audit log."""
    monitor = _monitor(services)
    ident = services.identities.get(session, identity_id)
    before = monitor.risk_of(ident.id, session)
    monitor.set_risk(session, ident.id, body.risk)
    services.audit.record(session, ev.RISK_SET, actor=admin, subject=ident.id,
                          ctx=request_context(request, admin),
                          reasons=[body.reason] if body.reason else [],
                          data={"before": before, "after": body.risk})
    session.commit()
    return {"identity": ident.id, "risk": body.risk}


@router.get("/v1/responses")
def list_responses(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                   identity: Annotated[str | None, Query(max_length=200)] = None,
                   status: Literal["active", "undone"] | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    rows = _monitor(services).responses(session, identity=identity, status=status,
                                        limit=limit)
    return {"items": [{"id": r.id, "ts": r.ts.isoformat(), "identity": r.identity_id,
                       "kind": r.kind, "threshold": r.threshold, "risk": r.risk,
                       "status": r.status, "data": r.data, "undone_by": r.undone_by}
                      for r in rows], "next_cursor": None}


@router.post("/v1/responses/{response_id}/undo")
def undo_response(response_id: str, request: Request, session: DbSession,
                  services: ServicesDep, admin: AdminSubject,
                  body: Reason | None = None) -> dict[str, Any]:
    row = _monitor(services).undo_response(session, response_id, actor=admin,
                                           reason=body.reason if body else "",
                                           ctx=request_context(request, admin))
    session.commit()
    return {"id": row.id, "kind": row.kind, "status": row.status}


class SubscriptionCreate(BaseModel):
    url: str = Field(max_length=1000)
    events: list[str] | None = Field(None, max_length=10)
    audience: str | None = Field(None, max_length=400)
    description: str = Field("", max_length=400)


def _sub_json(r: Any) -> dict[str, Any]:
    return {"id": r.id, "url": r.url, "events": r.events, "audience": r.audience,
            "status": r.status, "description": r.description,
            "created_at": r.created_at.isoformat()}


@router.post("/v1/subscriptions", status_code=201)
def create_subscription(body: SubscriptionCreate, request: Request, session: DbSession,
                        services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    row = _caep(services).subscribe(session, body.url, events=body.events,
                                    audience=body.audience, description=body.description,
                                    actor=admin, ctx=request_context(request, admin))
    session.commit()
    return _sub_json(row)


@router.get("/v1/subscriptions")
def list_subscriptions(session: DbSession, services: ServicesDep,
                       _admin: AdminSubject) -> dict[str, Any]:
    return {"items": [_sub_json(r) for r in _caep(services).subscriptions(session)],
            "next_cursor": None}


@router.delete("/v1/subscriptions/{sub_id}")
def delete_subscription(sub_id: str, request: Request, session: DbSession,
                        services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    row = _caep(services).unsubscribe(session, sub_id, actor=admin,
                                      ctx=request_context(request, admin))
    session.commit()
    return _sub_json(row)


@router.get("/v1/subscriptions/{sub_id}/deliveries")
def deliveries(sub_id: str, session: DbSession, services: ServicesDep, _admin: AdminSubject,
               status: Literal["pending", "delivered", "failed"] | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    caep = _caep(services)
    caep.get(session, sub_id)
    rows = caep.deliveries(session, subscription=sub_id, status=status, limit=limit)
    return {"items": [{"id": d.id, "event_type": d.event_type, "subject": d.subject,
                       "status": d.status, "attempts": d.attempts,
                       "next_attempt_at": d.next_attempt_at.isoformat(),
                       "last_error": d.last_error, "created_at": d.created_at.isoformat(),
                       "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
                      for d in rows], "next_cursor": None}


@router.post("/v1/subscriptions/{sub_id}/deliveries/{delivery_id}/retry")
def retry_delivery(sub_id: str, delivery_id: str, session: DbSession, services: ServicesDep,
                   _admin: AdminSubject) -> dict[str, Any]:
    caep = _caep(services)
    caep.get(session, sub_id)
    row = caep.retry(session, delivery_id)
    session.commit()
    return {"id": row.id, "status": row.status}

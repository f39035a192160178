"""Just-in-time access API: role definitions, access requests, action approvals, webhooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from sqlalchemy.orm import Session

from tessera.access.approvals import request_from
from tessera.access.ports import ActionRequest
from tessera.access.schemas import (
    AccessRequestCreate,
    AccessRequestRead,
    ApprovalCreate,
    ApprovalRead,
    ApprovalUse,
    DecisionBody,
    RoleDefine,
    RoleRead,
    WebhookCreate,
    WebhookRead,
)
from tessera.api.deps import AdminSubject, Caller, DbSession, ServicesDep, request_context
from tessera.errors import Forbidden, NotFound, Refused, ValidationFailed
from tessera.identity import ADMIN_ROLE

RequestStatus = Literal["pending", "approved", "denied", "withdrawn", "expired", "cancelled"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "used", "cancelled"]




@contextmanager
def audited_refusals(session: Session) -> Iterator[None]:
    """A `Refused` error was audited by the service: keep that event, then answer 4xx."""
    try:
        yield
    except Refused:
        session.commit()
        raise


roles_router = APIRouter(prefix="/v1/access-roles", tags=["access"])
requests_router = APIRouter(prefix="/v1/access-requests", tags=["access"])
approvals_router = APIRouter(prefix="/v1/approvals", tags=["access"])
webhooks_router = APIRouter(prefix="/v1/webhooks", tags=["access"])


@roles_router.put("/{name}", response_model=RoleRead)
def define_role(name: str, body: RoleDefine, request: Request, session: DbSession,
                services: ServicesDep, admin: AdminSubject) -> RoleRead:
    if body.name != name:
        raise ValidationFailed("the role name in the path and the body differ")
    row = services.access.define_role(session, body, actor=admin,
                                      ctx=request_context(request, admin))
    session.commit()
    return services.access.role_read(row)


@roles_router.get("")
def list_roles(session: DbSession, services: ServicesDep,
               _subject: Caller) -> dict[str, object]:
    return {"items": [services.access.role_read(r) for r in services.access.roles(session)],
            "next_cursor": None}


@requests_router.post("", status_code=201, response_model=AccessRequestRead)
def create_request(body: AccessRequestCreate, request: Request, session: DbSession,
                   services: ServicesDep, subject: Caller) -> AccessRequestRead:
    with audited_refusals(session):
        row = services.access.create(session, body, requester=subject,
                                     ctx=request_context(request, subject))
    session.commit()
    return services.access.read(session, row)


@requests_router.get("")
def list_requests(session: DbSession, services: ServicesDep, subject: Caller,
                  status: RequestStatus | None = None,
                  identity: Annotated[str | None, Query(max_length=40)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, object]:
    rows = services.access.list(session, viewer=subject, status=status, identity=identity,
                                limit=limit)
    return {"items": [services.access.read(session, r) for r in rows], "next_cursor": None}


@requests_router.get("/{request_id}", response_model=AccessRequestRead)
def show_request(request_id: str, session: DbSession, services: ServicesDep,
                 subject: Caller) -> AccessRequestRead:
    row = services.access.get(session, request_id)
    if not services.identities.has_role(session, subject, ADMIN_ROLE) and \
            not services.access.visible(session, subject, row):
        raise NotFound(f"access request {request_id!r} not found")
    return services.access.read(session, row)


def _request_decision(verb: str) -> None:
    def handler(request_id: str, request: Request, session: DbSession, services: ServicesDep,
                subject: Caller,
                body: Annotated[DecisionBody | None, Body()] = None) -> AccessRequestRead:
        comment = body.comment if body else ""
        ctx = request_context(request, subject)
        with audited_refusals(session):
            if verb == "withdraw":
                row = services.access.withdraw(session, request_id, actor=subject,
                                               reason=comment, ctx=ctx)
            else:
                row = getattr(services.access, verb)(session, request_id, approver=subject,
                                                     comment=comment, ctx=ctx)
        session.commit()
        return services.access.read(session, row)

    handler.__name__ = f"{verb}_request"
    requests_router.add_api_route(f"/{{request_id}}/{verb}", handler, methods=["POST"],
                                  response_model=AccessRequestRead,
                                  summary=f"{verb.capitalize()} an access request")


for _verb in ("approve", "deny", "withdraw"):
    _request_decision(_verb)


@approvals_router.post("", status_code=201, response_model=ApprovalRead)
def open_approval(body: ApprovalCreate, request: Request, session: DbSession,
                  services: ServicesDep, subject: Caller) -> ApprovalRead:
    with audited_refusals(session):
        row = services.approvals.open(session, request_from(body), requested_by=subject,
                                      group=body.group,
                                      approvals_required=body.approvals_required,
                                      summary=body.summary,
                                      ctx=request_context(request, subject))
    session.commit()
    return services.approvals.read(session, row)


@approvals_router.get("")
def list_approvals(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                   status: ApprovalStatus | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, object]:
    rows = services.approvals.list(session, status=status, limit=limit)
    return {"items": [services.approvals.read(session, r) for r in rows], "next_cursor": None}


@approvals_router.post("/verify", response_model=ApprovalRead)
def use_approval(body: ApprovalUse, request: Request, session: DbSession,
                 services: ServicesDep, subject: Caller) -> ApprovalRead:
    """Present an approval reference with the request it is for; accepted once."""
    if subject != body.principal and not services.identities.has_role(session, subject,
                                                                      ADMIN_ROLE):
        raise Forbidden("only the principal itself or an admin may present its approval")
    with audited_refusals(session):
        row = services.approvals.use(
            session, body.approval_reference,
            ActionRequest(body.principal, body.action, body.resource, dict(body.context)),
            actor=subject, ctx=request_context(request, subject))
    session.commit()
    return services.approvals.read(session, row)


@approvals_router.get("/{approval_id}", response_model=ApprovalRead)
def show_approval(approval_id: str, session: DbSession, services: ServicesDep,
                  subject: Caller) -> ApprovalRead:
    row = services.approvals.get(session, approval_id)
    services.approvals.authorise_view(session, row, subject)
    return services.approvals.read(session, row)


@approvals_router.get("/{approval_id}/wait", response_model=ApprovalRead)
def wait_approval(approval_id: str, request: Request, session: DbSession,
                  services: ServicesDep, subject: Caller,
                  timeout: Annotated[float, Query(ge=0, le=60)] = 30) -> ApprovalRead:
    """Long-poll until decided (the requester gets the approval reference, once)."""
    # Hold no transaction (nor SQLite's write lock) while waiting.
    session.rollback()
    return services.approvals.wait(approval_id, actor=subject, timeout=timeout,
                                   ctx=request_context(request, subject))


def _approval_decision(verb: str) -> None:
    def handler(approval_id: str, request: Request, session: DbSession, services: ServicesDep,
                subject: Caller,
                body: Annotated[DecisionBody | None, Body()] = None) -> ApprovalRead:
        with audited_refusals(session):
            row = getattr(services.approvals, verb)(
                session, approval_id, approver=subject, comment=body.comment if body else "",
                ctx=request_context(request, subject))
        session.commit()
        return services.approvals.read(session, row)

    handler.__name__ = f"{verb}_approval"
    approvals_router.add_api_route(f"/{{approval_id}}/{verb}", handler, methods=["POST"],
                                   response_model=ApprovalRead,
                                   summary=f"{verb.capitalize()} an action approval")


for _verb in ("approve", "deny"):
    _approval_decision(_verb)


@webhooks_router.post("", status_code=201, response_model=WebhookRead)
def create_webhook(body: WebhookCreate, request: Request, session: DbSession,
                   services: ServicesDep, admin: AdminSubject) -> WebhookRead:
    row, secret = services.webhooks.create(session, body, actor=admin,
                                           ctx=request_context(request, admin))
    session.commit()
    return services.webhooks.read(row, secret)


@webhooks_router.get("")
def list_webhooks(session: DbSession, services: ServicesDep,
                  _admin: AdminSubject) -> dict[str, object]:
    return {"items": [services.webhooks.read(r) for r in services.webhooks.list(session)],
            "next_cursor": None}


routers = [roles_router, requests_router, approvals_router, webhooks_router]

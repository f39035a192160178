"""Dynamic secrets API: admin connections and templates; credentials under leases."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from tessera.api.deps import AdminSubject, Caller, DbSession, ServicesDep, request_context
from tessera.api.routers.access import audited_refusals
from tessera.errors import Forbidden, NotFound
from tessera.identity import ADMIN_ROLE
from tessera.secrets.schemas import (
    ConnectionCreate,
    ConnectionRead,
    CredentialsRequest,
    LeaseRead,
    RenewRequest,
    RevokeRequest,
    TemplateCreate,
    TemplateRead,
)

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LeaseStatus = Literal["issuing", "active", "revoking", "revoked", "expired"]


@router.post("/connections", status_code=201, response_model=ConnectionRead)
def configure_connection(body: ConnectionCreate, request: Request, session: DbSession,
                         services: ServicesDep, admin: AdminSubject) -> ConnectionRead:
    row = services.secrets.configure_connection(session, body, actor=admin,
                                                ctx=request_context(request, admin))
    session.commit()
    return services.secrets.connection_read(row)


@router.get("/connections")
def list_connections(session: DbSession, services: ServicesDep,
                     _admin: AdminSubject) -> dict[str, object]:
    return {"items": [services.secrets.connection_read(r)
                      for r in services.secrets.connections(session)], "next_cursor": None}


@router.post("/templates", status_code=201, response_model=TemplateRead)
def define_template(body: TemplateCreate, request: Request, session: DbSession,
                    services: ServicesDep, admin: AdminSubject) -> TemplateRead:
    row = services.secrets.define_template(session, body, actor=admin,
                                           ctx=request_context(request, admin))
    session.commit()
    return services.secrets.template_read(session, row)


@router.get("/templates")
def list_templates(session: DbSession, services: ServicesDep,
                   _subject: Caller) -> dict[str, object]:
    return {"items": [services.secrets.template_read(session, r)
                      for r in services.secrets.templates(session)], "next_cursor": None}


@router.post("/creds/{template}", status_code=201)
def issue_credentials(template: str, request: Request, session: DbSession,
                      services: ServicesDep, subject: Caller,
                      body: Annotated[CredentialsRequest | None, Body()] = None) -> JSONResponse:
    """Fresh credentials under a new lease; the password is in this response only."""
    body = body or CredentialsRequest()
    identity = body.identity or subject
    if identity != subject and not services.identities.has_role(session, subject, ADMIN_ROLE):
        raise Forbidden("only an admin may obtain credentials for another identity")
    with audited_refusals(session):
        issued = services.secrets.issue(session, template, identity, actor=subject,
                                        ttl=body.ttl, ctx=request_context(request, subject))
    session.commit()
    return JSONResponse(issued.credentials.model_dump(mode="json"), status_code=201,
                        headers=NO_STORE)


def _own_lease(session: DbSession, services: ServicesDep, lease_id: str, subject: str) -> None:
    lease = services.secrets.lease(session, lease_id)
    if lease.identity_id != subject and not services.identities.has_role(session, subject,
                                                                         ADMIN_ROLE):
        raise NotFound(f"lease {lease_id!r} not found")


@router.get("/leases")
def list_leases(session: DbSession, services: ServicesDep, subject: Caller,
                status: LeaseStatus | None = None,
                identity: Annotated[str | None, Query(max_length=40)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, object]:
    if not services.identities.has_role(session, subject, ADMIN_ROLE):
        identity = subject
    rows = services.secrets.leases(session, identity_id=identity, status=status, limit=limit)
    return {"items": [services.secrets.lease_read(session, r) for r in rows],
            "next_cursor": None}


@router.get("/leases/{lease_id}", response_model=LeaseRead)
def show_lease(lease_id: str, session: DbSession, services: ServicesDep,
               subject: Caller) -> LeaseRead:
    _own_lease(session, services, lease_id, subject)
    return services.secrets.lease_read(session, services.secrets.lease(session, lease_id))


@router.post("/leases/{lease_id}/renew", response_model=LeaseRead)
def renew_lease(lease_id: str, request: Request, session: DbSession, services: ServicesDep,
                subject: Caller,
                body: Annotated[RenewRequest | None, Body()] = None) -> LeaseRead:
    _own_lease(session, services, lease_id, subject)
    with audited_refusals(session):
        lease = services.secrets.renew(session, lease_id, actor=subject,
                                       increment=body.increment if body else None,
                                       ctx=request_context(request, subject))
    session.commit()
    return services.secrets.lease_read(session, lease)


@router.post("/leases/{lease_id}/revoke", response_model=LeaseRead)
def revoke_lease(lease_id: str, request: Request, session: DbSession, services: ServicesDep,
                 subject: Caller,
                 body: Annotated[RevokeRequest | None, Body()] = None) -> LeaseRead:
    _own_lease(session, services, lease_id, subject)
    lease = services.secrets.revoke(session, lease_id, actor=subject,
                                    reason=body.reason if body else "",
                                    ctx=request_context(request, subject))
    session.commit()
    return services.secrets.lease_read(session, lease)

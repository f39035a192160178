"""Management API for trusted external issuers (workload identity federation)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tessera.api.deps import AdminSubject, DbSession, ServicesDep, request_context
from tessera.federation.schemas import IssuerCreate, IssuerRead, IssuerUpdate
from tessera.identity.schemas import Page

router = APIRouter(prefix="/v1/federation/issuers", tags=["federation"])


@router.post("", status_code=201, response_model=IssuerRead)
def add(body: IssuerCreate, request: Request, session: DbSession, services: ServicesDep,
        admin: AdminSubject) -> IssuerRead:
    row = services.federation.add(session, body, actor=admin,
                                  ctx=request_context(request, admin))
    session.commit()
    return services.federation.read(row)


@router.get("", response_model=Page)
def list_issuers(session: DbSession, services: ServicesDep, _admin: AdminSubject) -> Page:
    return Page(items=[services.federation.read(r) for r in services.federation.list(session)],
                next_cursor=None)


@router.get("/{issuer_id}", response_model=IssuerRead)
def show(issuer_id: str, session: DbSession, services: ServicesDep,
         _admin: AdminSubject) -> IssuerRead:
    return services.federation.read(services.federation.get(session, issuer_id))


@router.patch("/{issuer_id}", response_model=IssuerRead)
def update(issuer_id: str, body: IssuerUpdate, request: Request, session: DbSession,
           services: ServicesDep, admin: AdminSubject) -> IssuerRead:
    row = services.federation.update(session, issuer_id, body, actor=admin,
                                     ctx=request_context(request, admin))
    session.commit()
    return services.federation.read(row)


@router.delete("/{issuer_id}", status_code=204)
def remove(issuer_id: str, request: Request, session: DbSession, services: ServicesDep,
           admin: AdminSubject) -> Response:
    services.federation.remove(session, issuer_id, actor=admin,
                               ctx=request_context(request, admin))
    session.commit()
    return Response(status_code=204)

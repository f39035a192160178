"""Management API for identities and their credentials (problem+json errors)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request

from tessera.api.deps import AdminSubject, DbSession, ServicesDep, request_context
from tessera.identity.schemas import (
    CredentialCreate,
    CredentialRead,
    IdentityCreate,
    IdentityRead,
    IdentityUpdate,
    Kind,
    Page,
    Status,
    StatusChange,
)

router = APIRouter(prefix="/v1/identities", tags=["identities"])


@router.post("", status_code=201, response_model=IdentityRead)
def register(body: IdentityCreate, request: Request, session: DbSession,
             services: ServicesDep, admin: AdminSubject) -> IdentityRead:
    row = services.identities.register(session, body, actor=admin,
                                       ctx=request_context(request, admin))
    session.commit()
    return services.identities.read(session, row)


@router.get("", response_model=Page)
def list_identities(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                    kind: Kind | None = None, status: Status | None = None,
                    owner: Annotated[str | None, Query(max_length=40)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    cursor: Annotated[str | None, Query(max_length=40)] = None) -> Page:
    rows, next_cursor = services.identities.list(session, kind=kind, status=status,
                                                 owner=owner, limit=limit, cursor=cursor)
    return Page(items=[services.identities.read(session, r) for r in rows],
                next_cursor=next_cursor)


@router.get("/{identity_id}", response_model=IdentityRead)
def show(identity_id: str, session: DbSession, services: ServicesDep,
         _admin: AdminSubject) -> IdentityRead:
    return services.identities.read(session, services.identities.get(session, identity_id))


@router.patch("/{identity_id}", response_model=IdentityRead)
def update(identity_id: str, body: IdentityUpdate, request: Request, session: DbSession,
           services: ServicesDep, admin: AdminSubject) -> IdentityRead:
    row = services.identities.update(session, identity_id, body, actor=admin,
                                     ctx=request_context(request, admin))
    session.commit()
    return services.identities.read(session, row)


def _status_route(action: str) -> None:
    def handler(identity_id: str, request: Request, session: DbSession, services: ServicesDep,
                admin: AdminSubject,
                body: Annotated[StatusChange | None, Body()] = None) -> IdentityRead:
        change = getattr(services.identities, action)
        row = change(session, identity_id, actor=admin, reason=body.reason if body else "",
                     ctx=request_context(request, admin))
        session.commit()
        return services.identities.read(session, row)

    handler.__name__ = action
    router.add_api_route(f"/{{identity_id}}/{action}", handler, methods=["POST"],
                         response_model=IdentityRead, summary=f"{action.capitalize()} an identity")


for _action in ("suspend", "resume", "decommission"):
    _status_route(_action)


@router.post("/{identity_id}/credentials", status_code=201, response_model=CredentialRead)
def add_credential(identity_id: str, body: CredentialCreate, request: Request,
                   session: DbSession, services: ServicesDep,
                   admin: AdminSubject) -> CredentialRead:
    cred = services.identities.add_credential(session, identity_id, body, actor=admin,
                                              ctx=request_context(request, admin))
    session.commit()
    return services.identities.credential_read(cred)


@router.get("/{identity_id}/credentials", response_model=Page)
def list_credentials(identity_id: str, session: DbSession, services: ServicesDep,
                     _admin: AdminSubject) -> Page:
    rows = services.identities.credentials(session, identity_id)
    return Page(items=[services.identities.credential_read(r) for r in rows], next_cursor=None)


@router.delete("/{identity_id}/credentials/{credential_id}", response_model=CredentialRead)
def revoke_credential(identity_id: str, credential_id: str, request: Request,
                      session: DbSession, services: ServicesDep,
                      admin: AdminSubject) -> CredentialRead:
    cred = services.identities.revoke_credential(session, identity_id, credential_id,
                                                 actor=admin,
                                                 ctx=request_context(request, admin))
    session.commit()
    return services.identities.credential_read(cred)

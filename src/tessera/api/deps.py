"""Request-scoped dependencies: services, a database session, the authenticated admin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.container import Services
from tessera.errors import Forbidden, Unauthenticated
from tessera.identity import ADMIN_ROLE
from tessera.oauth.rfc9068_access_token import InvalidToken


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_session(request: Request) -> Iterator[Session]:
    with get_services(request).sessions() as session:
        yield session


def request_context(request: Request, actor: str | None = None) -> RequestContext:
    return RequestContext(request_id=request.scope.get("state", {}).get("request_id"),
                          source=request.client.host if request.client else None, actor=actor)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer access token is required")
    return token.strip()


def admin_subject(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """The identity id behind a valid admin access token (RFC 6750 bearer)."""
    services = get_services(request)
    try:
        claims = services.tokens.authenticate_bearer(bearer_token(request), session)
    except InvalidToken as exc:
        raise Unauthenticated("the access token is invalid or expired") from exc
    subject = claims["sub"]
    identity = services.identities.find(session, subject)
    if identity is None or not services.identities.is_usable(identity):
        raise Unauthenticated("the token's subject is not an active identity")
    if not services.identities.has_role(session, subject, ADMIN_ROLE):
        services.audit.record(session, ev.API_ACCESS_DENIED, outcome="failure", actor=subject,
                              action=f"{request.method} {request.url.path}",
                              ctx=request_context(request, subject),
                              reasons=["admin role required"])
        session.commit()
        raise Forbidden("this operation needs the admin role")
    return str(subject)


DbSession = Annotated[Session, Depends(get_session)]
AdminSubject = Annotated[str, Depends(admin_subject)]
ServicesDep = Annotated[Services, Depends(get_services)]

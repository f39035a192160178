"""Request-scoped dependencies: services, a database session, the authenticated admin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.container import Services
from tessera.errors import Forbidden, OAuthError, Unauthenticated
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


def _authenticate(request: Request, session: Session) -> dict[str, Any]:
    """Bearer (RFC 6750) or DPoP-bound (RFC 9449 §7) access token of Tessera's API."""
    services = get_services(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "dpop" and token.strip():
        proofs = request.headers.getlist("dpop")
        try:
            claims = services.lifecycle.authenticate_dpop(
                session, token.strip(), ",".join(proofs) or None, method=request.method,
                url=str(request.url), path=request.url.path)
        except (InvalidToken, OAuthError) as exc:
            raise Unauthenticated("the access token or its DPoP proof is invalid") from exc
        session.commit()  # the proof's jti is spent even when the route only reads
        return claims
    try:
        return services.tokens.authenticate_bearer(bearer_token(request), session)
    except InvalidToken as exc:
        raise Unauthenticated("the access token is invalid or expired") from exc


def admin_subject(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """The identity id behind a valid admin access token (bearer or DPoP)."""
    services = get_services(request)
    claims = _authenticate(request, session)
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

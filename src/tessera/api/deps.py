"""Request-scoped dependencies: services, a database session, the authenticated caller allowed
by the management policy set (Cedar, `admin`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tessera.api.tls import certificate_binding_holds
from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.authz import ADMIN_SET
from tessera.container import Services
from tessera.errors import Forbidden, OAuthError, Unauthenticated
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


def _cacheable_bearer(request: Request) -> str | None:
    """The bearer token of this request if the caller cache may hold it (never DPoP)."""
    callers = get_services(request).callers
    if callers is None or not callers.enabled:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _bound_subject(request: Request, claims: dict[str, Any]) -> str:
    if not certificate_binding_holds(request.scope, claims):  # RFC 8705 §3
        raise Unauthenticated("the token is bound to a certificate this connection did "
                              "not present")
    return str(claims["sub"])


def authenticated_subject(request: Request, session: Session, *,
                          cached: bool = False) -> str:
    """The `sub` of a valid Tessera access token (Bearer or DPoP-bound, maybe mTLS-bound).

    `cached`: a bearer token fully checked moments ago is taken from the caller cache
    (`tessera.authz.callers`, bounded staleness), and a full check fills it."""
    token = _cacheable_bearer(request) if cached else None
    callers = get_services(request).callers
    if token is None or callers is None:
        return _bound_subject(request, _authenticate(request, session))
    claims = callers.get(token)
    if claims is None:
        generation = callers.generation
        claims = _authenticate(request, session)
        callers.put(token, claims, generation)
    return _bound_subject(request, claims)


def authorize_call(request: Request, session: Session, subject: str, *,
                   log_allowed: bool = True) -> None:
    """Ask the `admin` policy set (Cedar) whether `subject` may call this route."""
    services = get_services(request)
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    target = request.path_params.get("identity_id")
    ctx = request_context(request, subject)
    req, decision = services.authz.authorize_management(subject, request.method, template,
                                                        target, ctx.source)
    if decision.allowed and not log_allowed:
        return
    services.authz.record_decision(session, req, decision, actor=subject, ctx=ctx,
                                   policy_set=ADMIN_SET)
    if not decision.allowed:
        services.audit.record(session, ev.API_ACCESS_DENIED, outcome="failure", actor=subject,
                              action=f"{request.method} {request.url.path}", ctx=ctx,
                              reasons=decision.reasons)
        session.commit()
        raise Forbidden("this operation is not permitted by policy",
                        extra={"reasons": decision.reasons})
    session.commit()


def admin_subject(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """The identity behind a valid access token, allowed by the management policies."""
    services = get_services(request)
    subject = authenticated_subject(request, session)
    identity = services.identities.find(session, subject)
    if identity is None or not services.identities.is_usable(identity):
        raise Unauthenticated("the token's subject is not an active identity")
    authorize_call(request, session, subject)
    return subject


def pdp_caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """A PDP caller: a valid token whose subject the policies allow to ask (no DB read; an
    inactive or unknown subject is denied by the decision itself)."""
    subject = authenticated_subject(request, session, cached=True)
    authorize_call(request, session, subject, log_allowed=False)
    return subject


def _pdp_caller_in_session(request: Request) -> str:
    services = get_services(request)
    scheme = request.headers.get("authorization", "").partition(" ")[0]
    if scheme.lower() != "bearer":  # DPoP spends its proof's jti: a write
        with services.sessions() as session:
            return pdp_caller(request, session)
    # A bearer token's check only reads: a read transaction, which on SQLite does not queue
    # behind the audit committer's write lock (under sustained load, BEGIN IMMEDIATE here
    # starved past the busy timeout: 500s). Only a denial writes (its audit event), in a
    # session of its own that begins no transaction when the caller is allowed.
    with services.read_sessions() as session:
        subject = authenticated_subject(request, session, cached=True)
    with services.sessions() as session:
        authorize_call(request, session, subject, log_allowed=False)
    return subject


async def pdp_caller_async(request: Request) -> str:
    """`pdp_caller` for async routes: from memory on the event loop when the token is in the
    caller cache, the snapshots are fresh and the policies allow the caller; otherwise (a
    first sight of the token, a check due, a denial to log) on a worker thread."""
    services = get_services(request)
    token = _cacheable_bearer(request)
    claims = services.callers.get(token) if token and services.callers else None
    if claims is not None and not services.authz.refresh_due():
        subject = _bound_subject(request, claims)
        route = request.scope.get("route")
        _req, decision = services.authz.authorize_management(
            subject, request.method, getattr(route, "path", request.url.path), None,
            request.client.host if request.client else None,
            snapshot=services.authz.current(ADMIN_SET))
        if decision.allowed:
            return subject
    return await run_in_threadpool(_pdp_caller_in_session, request)


DbSession = Annotated[Session, Depends(get_session)]
AdminSubject = Annotated[str, Depends(admin_subject)]
PDPCaller = Annotated[str, Depends(pdp_caller)]
ServicesDep = Annotated[Services, Depends(get_services)]

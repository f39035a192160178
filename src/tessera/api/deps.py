"""Request-scoped dependencies: services, a database session, the authenticated caller allowed
by the management policy set (Cedar, `admin`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tessera.api.tls import client_cert_der
from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.authz import ADMIN_SET
from tessera.container import Services
from tessera.errors import Forbidden, Unauthenticated, WouldBlock
from tessera.oauth.api_gate import ApiCredentialRejected, Presented

log = logging.getLogger("tessera.api")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_session(request: Request) -> Iterator[Session]:
    with get_services(request).sessions() as session:
        yield session


def request_context(request: Request, actor: str | None = None) -> RequestContext:
    return RequestContext(request_id=request.scope.get("state", {}).get("request_id"),
                          source=request.client.host if request.client else None, actor=actor)


def presented(request: Request) -> Presented:
    """What the request presents to the gate: headers, method, URL and TLS certificate."""
    return Presented(authorization=request.headers.get("authorization", ""),
                     dpop=request.headers.getlist("dpop"), method=request.method,
                     url=str(request.url), path=request.url.path,
                     client_cert=client_cert_der(request.scope))


def _refusal(exc: ApiCredentialRejected) -> Unauthenticated:
    """401 with the RFC 6750 §3 / RFC 9449 §7.1 challenge; the reason stays in the log."""
    log.info("access token refused: %s", exc.reason)
    if exc.nonce is not None:
        return Unauthenticated("the DPoP proof must carry the server's nonce", headers={
            "WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": exc.nonce})
    if exc.dpop:
        return Unauthenticated("the access token or its DPoP proof is invalid",
                               headers={"WWW-Authenticate": 'DPoP error="invalid_token"'})
    return Unauthenticated("the access token is invalid, expired or revoked")


def authenticate(request: Request, session: Session,
                 revisions: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """The one gate: the claims of the request's access token after the full check
    (`tessera.oauth.api_gate`). Every route that accepts a Tessera token comes here."""
    services = get_services(request)
    try:
        claims = services.gate.authenticate(session, presented(request), revisions)
    except ApiCredentialRejected as exc:
        session.rollback()
        raise _refusal(exc) from exc
    if session.new or session.dirty or "cnf" in claims:
        session.commit()  # a DPoP proof's jti is spent even when the route only reads
    return claims


def _cacheable_bearer(request: Request) -> str | None:
    """The bearer token of this request if the caller cache may hold it (never DPoP)."""
    callers = get_services(request).callers
    if callers is None or not callers.enabled:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authenticated_subject(request: Request, session: Session) -> str:
    """The `sub` of a valid Tessera access token, fully checked (`authenticated_claims`)."""
    return str(authenticated_claims(request, session)["sub"])


def authenticated_claims(request: Request, session: Session) -> dict[str, Any]:
    """The claims of a valid Tessera access token, fully checked; a bearer token that passed
    goes into the caller cache, whose entries the decision path validates at commit."""
    services = get_services(request)
    token = _cacheable_bearer(request)
    callers = services.callers
    generation = callers.generation if callers is not None else 0
    revisions: list[tuple[str, int]] | None = [] if token is not None else None
    claims = authenticate(request, session, revisions)
    if token is not None and callers is not None and "cnf" not in claims:
        callers.put(token, claims, generation, revisions)
    return claims


def caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """Any registered, active identity with a valid access token (agents, owners, approvers):
    the self-service routes (CA, secrets, access requests, approvals)."""
    return authenticated_subject(request, session)


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
    subject = authenticated_subject(request, session)
    authorize_call(request, session, subject)
    return subject


def pdp_caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> str:
    """A PDP caller: a valid token whose subject the policies allow to ask."""
    subject = authenticated_subject(request, session)
    authorize_call(request, session, subject, log_allowed=False)
    return subject


def pdp_caller_in_session(request: Request) -> str:
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
        subject = authenticated_subject(request, session)
    with services.sessions() as session:
        authorize_call(request, session, subject, log_allowed=False)
    return subject


@dataclass(frozen=True)
class CachedCaller:
    """A caller answered from the caller cache: its decision's commit must re-validate it
    (`revisions` and `jti`, see `tessera.authz.callers`)."""

    subject: str
    jti: str | None
    revisions: tuple[tuple[str, int], ...]


async def pdp_caller_async(request: Request) -> str | CachedCaller:
    """`pdp_caller` for async routes. From memory on the event loop when the bearer token is
    in the caller cache, the snapshots are fresh and the policies allow the caller: the answer
    is then a `CachedCaller`, and the decision's commit checks that no party behind the token
    changed and the token was not revoked since (on any node); otherwise the full check runs
    on a worker thread."""
    services = get_services(request)
    token = _cacheable_bearer(request)
    entry = services.callers.entry(token) if token and services.callers else None
    if entry is not None and not services.authz.refresh_due():
        claims = entry.claims
        subject = str(claims["sub"])
        route = request.scope.get("route")
        try:
            _req, decision = services.authz.authorize_management(
                subject, request.method, getattr(route, "path", request.url.path), None,
                request.client.host if request.client else None,
                snapshot=services.authz.current(ADMIN_SET), io=False)
            allowed = decision.allowed
        except WouldBlock:  # the caller's risk score is due for a read: the thread reads it
            allowed = False
        if allowed:
            jti = claims.get("jti")
            return CachedCaller(subject, jti if isinstance(jti, str) else None,
                                entry.revisions)
    return await run_in_threadpool(pdp_caller_in_session, request)


DbSession = Annotated[Session, Depends(get_session)]
AdminSubject = Annotated[str, Depends(admin_subject)]
PDPCaller = Annotated[str, Depends(pdp_caller)]
Caller = Annotated[str, Depends(caller)]
ServicesDep = Annotated[Services, Depends(get_services)]

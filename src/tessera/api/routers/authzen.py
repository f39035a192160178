"""AuthZEN Authorization API 1.0 over HTTPS — https://openid.net/specs/authorization-api-1_0.html

Thin: read the body, authenticate and authorize the caller (a Tessera access token, then the
`admin` policy set), call `tessera.authz.authzen`, log every decision, answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tessera.api.deps import (
    CachedCaller,
    DbSession,
    PDPCaller,
    ServicesDep,
    pdp_caller_async,
    pdp_caller_in_session,
    request_context,
)
from tessera.api.errors import problem
from tessera.api.middleware import FastJSONResponse, serve_bare
from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.authz import authzen
from tessera.authz.approvals import REFERENCE_KEY
from tessera.authz.engine import Decision, EvalRequest
from tessera.authz.errors import AuthZENError
from tessera.errors import WouldBlock
from tessera.oauth.deferred import HOOK_NOT_REVOKED, HOOK_REV, RevokedCaller, StaleClient

router = APIRouter(tags=["authzen"])
SEARCH_PATHS = {"subject": "/access/v1/search/subject", "resource": "/access/v1/search/resource",
                "action": "/access/v1/search/action"}


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
REFERENCE_BYTES = REFERENCE_KEY.encode()


def install(app: FastAPI) -> None:
    """Map AuthZEN errors to their HTTP status (problem+json body)."""

    async def _authzen_error(request: Request, exc: Exception) -> JSONResponse:
        err = exc if isinstance(exc, AuthZENError) else AuthZENError(str(exc))
        return problem(err.status, err.code, err.message, request)

    app.add_exception_handler(AuthZENError, _authzen_error)


@router.get("/.well-known/authzen-configuration")
def configuration(services: ServicesDep) -> dict[str, Any]:
    """PDP metadata (§13): where each API lives."""
    base = services.settings.issuer_url
    return {"policy_decision_point": base,
            "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
            "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
            "search_subject_endpoint": f"{base}{SEARCH_PATHS['subject']}",
            "search_resource_endpoint": f"{base}{SEARCH_PATHS['resource']}",
            "search_action_endpoint": f"{base}{SEARCH_PATHS['action']}"}


def _decide(request: Request, raw: bytes, caller: str, session: Any, services: Any,
            batch: bool, io: bool = True) -> tuple[dict[str, Any],
                                                   list[tuple[EvalRequest, Decision]],
                                                   RequestContext]:
    """Parse, evaluate (in memory, apart from an approval reference spent in `session`).
    With `io=False` (the event loop) anything due for a read raises `WouldBlock`."""
    body = authzen.parse_body(raw, request.headers.get("content-type"))
    ctx = request_context(request, caller)
    snap = services.authz.snapshot() if session is not None else services.authz.current()
    now = services.clock.now()

    def decide(req: EvalRequest) -> Decision:
        return services.authz.decide(session, snap, req, now, actor=caller, ctx=ctx, io=io)

    if batch:
        out, results = authzen.evaluations(snap, body, ctx.source, now, decide)
    else:
        req = authzen.to_request(snap, body, ctx.source)
        decision = decide(req)
        out = authzen.response(decision)
        results = [authzen.Evaluated(req, decision, out)]
    done = [(i.request, i.decision) for i in results
            if i.request is not None and i.decision is not None]
    return out, done, ctx


def _evaluate(request: Request, raw: bytes, caller: str, services: Any,
              batch: bool) -> dict[str, Any]:
    """The session path (a worker thread): a snapshot or approval-gate read is due, or an
    approval reference is to be spent (which writes in the request's transaction)."""
    authz = services.authz
    if authz.can_submit_decisions() and REFERENCE_BYTES not in raw:
        # Nothing to write but the decision event: the due reads (snapshot check, approval
        # gate) use their owners' read sessions, and the event goes to the committer, as on
        # the memory path. A BEGIN IMMEDIATE here waited for the committer's write lock and,
        # under sustained load on SQLite, past the busy timeout (500s). Decided without a
        # session, as from memory: a reference hidden from the byte check is refused.
        authz.snapshot()
        out, done, ctx = _decide(request, raw, caller, None, services, batch)
        if done:
            authz.commit_batch(done, actor=caller, ctx=ctx)
        return out
    with services.sessions() as session:
        out, done, ctx = _decide(request, raw, caller, session, services, batch)
        if done:
            services.authz.record_batch(session, done, actor=caller, ctx=ctx)
        session.commit()  # returns once the decision events are durable
    return out


async def _evaluate_async(request: Request, batch: bool) -> JSONResponse:
    """No thread hop and no database read when nothing needs one: the caller comes from the
    caller cache, the snapshots and the approval gate answer from memory, and the decision
    event goes straight to the audit group committer, awaited until it is durable. The commit
    re-validates the cached caller (no party behind its token changed, the token was not
    revoked, on any node); if it no longer holds, the request is answered by the full path.

    Otherwise — a check due, group commit off, or an approval reference to spend (its
    redemption writes in the request's transaction) — the session path runs on a worker
    thread, as before; so does a decision whose principal's risk score is due for a read.
    A reference hidden from the byte check (e.g. a \\u-escaped key) is
    never spent on the memory path: it is refused (`approval_unavailable`), never honoured."""
    services = request.app.state.services
    raw = await request.body()
    caller = await pdp_caller_async(request)
    authz = services.authz
    if isinstance(caller, CachedCaller):
        if authz.can_submit_decisions() and REFERENCE_BYTES not in raw and \
                not authz.refresh_due():
            try:
                out, done, ctx = _decide(request, raw, caller.subject, None, services, batch,
                                         io=False)
            except WouldBlock:
                # A risk score is due for a read: the worker thread answers (and reads it).
                done = []
            # Nothing to commit, nothing validates the cached caller: the full path answers.
            if done:
                intents: dict[str, list[Any]] = {HOOK_REV: list(caller.revisions)}
                if caller.jti is not None:
                    intents[HOOK_NOT_REVOKED] = [caller.jti]
                try:
                    await authz.submit_batch(done, actor=caller.subject, ctx=ctx,
                                             intents=intents)
                except (StaleClient, RevokedCaller):
                    services.callers.clear()  # something behind a cached token changed
                else:
                    return FastJSONResponse(out)
        caller = await run_in_threadpool(pdp_caller_in_session, request)
    return FastJSONResponse(await run_in_threadpool(_evaluate, request, raw, caller, services,
                                                    batch))


@router.post("/access/v1/evaluation")
async def evaluation(request: Request) -> JSONResponse:
    """Access Evaluation API (§6)."""
    return await _evaluate_async(request, batch=False)


@router.post("/access/v1/evaluations")
async def evaluations(request: Request) -> JSONResponse:
    """Access Evaluations API (§7): boxcarred requests with defaults and semantics."""
    return await _evaluate_async(request, batch=True)


serve_bare(router, "/access/v1/evaluation", evaluation)
serve_bare(router, "/access/v1/evaluations", evaluations)


def _search_route(kind: str) -> None:
    def handler(request: Request, raw: RawBody, caller: PDPCaller, session: DbSession,
                services: ServicesDep) -> dict[str, Any]:
        body = authzen.parse_body(raw, request.headers.get("content-type"))
        ctx = request_context(request, caller)
        out = authzen.search(kind, services.authz.snapshot(), body, ctx.source,
                             services.clock.now())
        services.audit.record(session, ev.AUTHZ_SEARCH, actor=caller, ctx=ctx,
                              action=f"search.{kind}",
                              data={"request": {k: body.get(k) for k in authzen.TUPLE_KEYS
                                                if k in body},
                                    "results": len(out["results"])})
        session.commit()
        return out

    handler.__name__ = f"search_{kind}"
    router.add_api_route(SEARCH_PATHS[kind], handler, methods=["POST"],
                         summary=f"{kind.capitalize()} Search API")


for _kind in ("subject", "resource", "action"):
    _search_route(_kind)

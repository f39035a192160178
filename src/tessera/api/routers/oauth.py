"""OAuth endpoints: metadata (RFC 8414), JWKS, token (RFC 6749 §3.2), introspection (RFC 7662),
revocation (RFC 7009)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tessera.api.deps import ServicesDep, get_services, request_context
from tessera.api.errors import NO_STORE, oauth_error_response
from tessera.api.middleware import FastJSONResponse, serve_bare
from tessera.api.tls import client_cert_der
from tessera.audit import RequestContext
from tessera.container import Services
from tessera.errors import InvalidRequest, OAuthError
from tessera.oauth.rfc8414_metadata import metadata

router = APIRouter(tags=["oauth"])
MULTI_VALUED = {"resource"}  # RFC 8707 §2: resource may repeat


def parse_form(request: Request, body: bytes) -> tuple[dict[str, str], list[str]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the body is not a valid form") from exc
    form: dict[str, str] = {}
    resources: list[str] = []
    for key, value in pairs:
        if key in MULTI_VALUED:
            resources.append(value)
        elif key in form:
            # RFC 6749 §3.2: parameters MUST NOT be included more than once.
            raise InvalidRequest(f"parameter {key!r} repeated")
        else:
            form[key] = value
    return form, resources


def _transport(request: Request) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in request.headers.items()}
    dpop = request.headers.getlist("dpop")
    if dpop:
        # RFC 9449 §4.3: more than one DPoP header is an error; joining makes it fail.
        headers["dpop"] = ",".join(dpop)
    return {"method": request.method, "url": str(request.url), "headers": headers,
            "client_cert": client_cert_der(request.scope)}


@router.post("/oauth2/token")
async def token(request: Request) -> JSONResponse:
    """Token endpoint (RFC 6749 §3.2). The common request is served on the event loop
    (`TokenService.handle_async`); served through a bare ASGI route (`serve_bare`)."""
    services = get_services(request)
    ctx = request_context(request)
    try:
        form, resources = parse_form(request, await request.body())
        result = await services.tokens.handle_async(form, resources, ctx,
                                                    **_transport(request))
    except OAuthError as err:
        return oauth_error_response(err)
    return FastJSONResponse(result.body, headers={**NO_STORE, **result.headers})


serve_bare(router, "/oauth2/token", token)


def _introspect(services: Services, form: dict[str, str], ctx: RequestContext,
                transport: dict[str, Any]) -> dict[str, Any]:
    with services.sessions() as session:
        try:
            body = services.lifecycle.introspect(session, form, ctx, **transport)
            session.commit()  # the client assertion's jti is now spent
            return body
        except OAuthError as err:
            session.rollback()
            failure = err
    services.tokens.refuse(failure, form, ctx)
    raise failure


def _revoke(services: Services, form: dict[str, str], ctx: RequestContext,
            transport: dict[str, Any]) -> None:
    with services.sessions() as session:
        try:
            services.lifecycle.revoke(session, form, ctx, **transport)
            session.commit()
            return
        except OAuthError as err:
            session.rollback()
            failure = err
    services.tokens.refuse(failure, form, ctx)
    raise failure


@router.post("/oauth2/introspect")
async def introspect(request: Request) -> JSONResponse:
    """RFC 7662 §2: client-authenticated; inactive tokens answer {"active": false}."""
    services = get_services(request)
    ctx = request_context(request)
    try:
        form, _ = parse_form(request, await request.body())
        body = await run_in_threadpool(_introspect, services, form, ctx, _transport(request))
    except OAuthError as err:
        return oauth_error_response(err)
    return JSONResponse(body, headers=NO_STORE)


@router.post("/oauth2/revoke")
async def revoke(request: Request) -> JSONResponse:
    """RFC 7009 §2: client-authenticated; 200 for unknown or invalid tokens too."""
    services = get_services(request)
    ctx = request_context(request)
    try:
        form, _ = parse_form(request, await request.body())
        await run_in_threadpool(_revoke, services, form, ctx, _transport(request))
    except OAuthError as err:
        return oauth_error_response(err)
    return JSONResponse({}, headers=NO_STORE)


@router.get("/.well-known/oauth-authorization-server")
def authorization_server_metadata(services: ServicesDep) -> dict[str, Any]:
    return metadata(services.tokens.issuer, grant_types=services.lifecycle.grant_types,
                    dpop_algs=services.lifecycle.settings.dpop_algs,
                    auth_methods=services.tokens.auth_methods,
                    certificate_bound_tokens=services.tokens.certificate_bound_tokens)


@router.get("/oauth2/jwks")
def jwks(services: ServicesDep) -> JSONResponse:
    return JSONResponse(services.keys.jwks(), media_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=60"})

"""OAuth endpoints: metadata (RFC 8414), JWKS, token (RFC 6749 §3.2), introspection (RFC 7662),
revocation (RFC 7009)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import URL
from starlette.types import Scope

from tessera.api.deps import ServicesDep, get_services, request_context
from tessera.api.errors import NO_STORE, oauth_error_body, oauth_error_response
from tessera.api.tls import client_cert_der
from tessera.audit import RequestContext
from tessera.container import Services
from tessera.errors import InvalidRequest, OAuthError
from tessera.oauth.rfc8414_metadata import metadata

router = APIRouter(tags=["oauth"])
MULTI_VALUED = {"resource"}  # RFC 8707 §2: resource may repeat


FORM = "application/x-www-form-urlencoded"


def parse_form_body(content_type: str, body: bytes) -> tuple[dict[str, str], list[str]]:
    if content_type.split(";")[0].strip().lower() != FORM:
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


def parse_form(request: Request, body: bytes) -> tuple[dict[str, str], list[str]]:
    return parse_form_body(request.headers.get("content-type", ""), body)


def transport_of(scope: Scope) -> dict[str, Any]:
    """What the token, introspection and revocation endpoints read of the request besides
    its form: method, headers (names in lower case, as ASGI servers give them), the URL and
    the verified TLS client certificate."""
    headers: dict[str, str] = {}
    dpop: list[str] = []
    for name, value in scope["headers"]:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = text
        if key == "dpop":
            dpop.append(text)
    if len(dpop) > 1:
        # RFC 9449 §4.3: more than one DPoP header is an error; joining makes it fail.
        headers["dpop"] = ",".join(dpop)
    # The URL matters only to a DPoP proof (its htu claim); built only then.
    return {"method": scope["method"], "url": str(URL(scope=scope)) if dpop else "",
            "headers": headers, "client_cert": client_cert_der(scope)}


_JSON_NO_STORE = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                  (b"pragma", b"no-cache")]
_NO_STORE_NAMES = {name.lower() for name in NO_STORE}


def _answer(status: int, body: dict[str, Any], extra: dict[str, str]
            ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = list(_JSON_NO_STORE)
    for name, value in extra.items():
        if name.lower() in _NO_STORE_NAMES:  # the handler's own value wins, as in a dict
            headers = [h for h in headers if h[0] != name.lower().encode()]
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return status, headers, orjson.dumps(body)


async def token_parts(scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Token endpoint (RFC 6749 §3.2) as a lane handler (`tessera.api.middleware.Lane`): the
    common request is served on the event loop (`TokenService.handle_async`)."""
    services: Services = scope["app"].state.services
    transport = transport_of(scope)
    client = scope.get("client")
    ctx = RequestContext(request_id=scope["state"]["request_id"],
                         source=client[0] if client else None)
    try:
        form, resources = parse_form_body(transport["headers"].get("content-type", ""), body)
        result = await services.tokens.handle_async(form, resources, ctx, **transport)
    except OAuthError as err:
        return _answer(err.status, oauth_error_body(err), err.headers)
    return _answer(200, result.body, result.headers)


@router.post("/oauth2/token")
async def token(request: Request) -> Response:
    """Token endpoint (RFC 6749 §3.2). `create_app` serves this path through a lane
    (`token_parts`); this route is its definition for OpenAPI."""
    status, headers, body = await token_parts(request.scope, await request.body())
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


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
        body = await run_in_threadpool(_introspect, services, form, ctx, transport_of(request.scope))
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
        await run_in_threadpool(_revoke, services, form, ctx, transport_of(request.scope))
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

"""One table from typed errors to HTTP: problem+json for /v1, RFC 6749 §5.2 JSON for OAuth."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.errors import AppError, OAuthError, Unauthenticated

log = logging.getLogger("tessera.api")
PROBLEM = "application/problem+json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def problem(status: int, code: str, detail: str, request: Request | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://tessera.dev/problems/{code}",
                            "title": code.replace("_", " "), "status": status, "detail": detail,
                            "code": code}
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def oauth_error_body(err: OAuthError) -> dict[str, str]:
    """RFC 6749 §5.2 error document."""
    body = {"error": err.error}
    if err.description:
        body["error_description"] = err.description
    return body


def oauth_error_response(err: OAuthError) -> JSONResponse:
    return JSONResponse(oauth_error_body(err), status_code=err.status,
                        headers={**NO_STORE, **err.headers})


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    # Never echo input values back: they may hold keys or tokens.
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""),
             "type": e.get("type", "")} for e in errors]


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        headers = exc.headers if isinstance(exc, Unauthenticated) else None
        return problem(exc.status, exc.code, exc.message, request, headers, **exc.extra)

    @app.exception_handler(OAuthError)
    async def _oauth_error(_request: Request, exc: OAuthError) -> JSONResponse:
        return oauth_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(400, "malformed_json", "the request body is not valid JSON", request)
        return problem(422, "validation_failed", "the request is not valid", request,
                       errors=_clean_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), request,
                       getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "an internal error occurred", request)

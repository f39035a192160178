"""Pure ASGI middleware: request body size limit and request ids; lanes for the hot routes."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
log = logging.getLogger("tessera.api")


def _problem_body(status: int, code: str, detail: str, **extra: Any) -> bytes:
    # Compact, as the app's JSONResponse renders the same document.
    return json.dumps({"type": f"https://tessera.dev/problems/{code}", "title":
                       code.replace("_", " "), "status": status, "detail": detail,
                       "code": code, **extra}, separators=(",", ":")).encode()


async def _send_problem(send: Send, status: int, code: str, detail: str,
                        extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = _problem_body(status, code, detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def _request_id(value: bytes) -> str | None:
    candidate = value.decode("latin-1")
    return candidate if REQUEST_ID_RE.match(candidate) else None


class FastJSONResponse(JSONResponse):
    """`JSONResponse` encoded by orjson: the same compact UTF-8 JSON, several times faster
    (a 100-item AuthZEN batch answer is ~20 KB)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BareEndpoint:
    """A request -> response coroutine as a bare ASGI endpoint, for the hot routes.

    FastAPI's per-request machinery (dependency solving, response wrapping) costs a visible
    share of a sub-millisecond request. Registered as a Starlette `Route` ahead of the FastAPI
    route for the same path (which stays for OpenAPI and as the reference definition), it
    serves the request; the app's middleware and exception handlers still apply."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def serve_bare(router: APIRouter, path: str,
               handler: Callable[[Request], Awaitable[Response]]) -> None:
    """Serve POST `path` of `router` with `handler` through a `BareEndpoint`."""
    router.routes.insert(0, Route(path, BareEndpoint(handler), methods=["POST"],
                                  include_in_schema=False))


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _send_problem(send, 413, "payload_too_large",
                                        f"request body exceeds {self.limit} bytes")
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_problem(send, 413, "payload_too_large",
                                    f"request body exceeds {self.limit} bytes")


class _TooLarge(Exception):
    pass


class RequestIDMiddleware:
    """Take a well-formed X-Request-ID or make one; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                rid = _request_id(value)
                break
        rid = rid or secrets.token_hex(8)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


# A lane handler: (scope, body) -> (status, headers, body), the scope's state holding the
# request id. It answers every outcome it knows itself; anything it raises is a 500.
LaneHandler = Callable[[Scope, bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]


class Lane:
    """One route served ahead of the app's whole middleware stack, for the hottest path.

    A sub-millisecond request spends a quarter of its CPU in the stack an ASGI app normally
    runs it through (about a dozen nested middleware and routing layers, each wrapping
    `receive`/`send`). A lane does what that stack does for its route, flattened into one
    function: the request id (`RequestIDMiddleware`), the body limit (`BodyLimitMiddleware`),
    and the catch-all 500 of `tessera.api.errors`; the handler answers everything else
    itself. The app's own route for the same path stays (OpenAPI, and apps built without
    lanes) and shares the handler, so both answer byte for byte the same (except that a lane's
    500 also carries the request id, which the stack's outermost error handler cannot add).
    Lanes are left out when FastAPI's per-request telemetry is on: they would bypass it.
    """

    def __init__(self, handler: LaneHandler, limit: int) -> None:
        self.handler = handler
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if rid is None:
                    rid = _request_id(value) or ""
            elif name == b"content-length":
                length = value
        rid = rid or secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                await self._too_large(send, rid_header)
                return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._too_large(send, rid_header)
                return
            more = message.get("more_body", False)
        try:
            status, headers, payload = await self.handler(scope, body)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, payload = 500, _problem_body(500, "internal_error",
                                                 "an internal error occurred",
                                                 instance=scope["path"])
            headers = [(b"content-type", b"application/problem+json")]
        headers.append((b"content-length", str(len(payload)).encode()))
        headers.append(rid_header)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _too_large(self, send: Send, rid_header: tuple[bytes, bytes]) -> None:
        await _send_problem(send, 413, "payload_too_large",
                            f"request body exceeds {self.limit} bytes", [rid_header])

"""Pure ASGI middleware: request body size limit and request ids; lanes for the hot routes."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.text import CONTROL_RE, storable, unstorable_at

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
log = logging.getLogger("tessera.api")


def _problem_body(status: int, code: str, detail: str, **extra: Any) -> bytes:
    # Compact, as the app's JSONResponse renders the same document.
    return json.dumps({"type": f"https://tessera.dev/problems/{code}", "title":
                       code.replace("_", " "), "status": status, "detail": detail,
                       "code": code, **extra}, separators=(",", ":")).encode()


async def _send_problem(send: Send, status: int, code: str, detail: str,
                        extra_headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any
                        ) -> None:
    body = _problem_body(status, code, detail, **extra)
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


# A JSON string can hold NUL or a lone surrogate only as a \u escape (raw control characters
# are invalid JSON): a body without one of these needs no second parse.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;|$)", re.IGNORECASE)


class InputGuardMiddleware:
    """Refuse input no route can use before it reaches a query: NUL and other unstorable
    characters (`tessera.text`). PostgreSQL refuses NUL in text, so without this a NUL in a
    path parameter, a query filter or a JSON string answered 500 there (and was stored as is
    on SQLite).

    - A path with a control character names nothing: 404 `not_found`.
    - A query parameter with a control character (names, ids and filters never hold one):
      422 `validation_failed`, its location in `errors` as FastAPI gives it.
    - A JSON body of the management API (`/v1/...`) with NUL or a lone surrogate in a key or
      a string: 422 `validation_failed`. Other control characters are left to the route's
      schema (a policy file holds line breaks).
    Refused before authentication, as a malformed request is; nothing of the value is echoed.
    The token endpoint's lane and the protocol endpoints check their own inputs (an invalid
    client id there is `invalid_client`, audited)."""

    def __init__(self, app: ASGIApp, body_prefix: str = "/v1/") -> None:
        self.app = app
        self.body_prefix = body_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if CONTROL_RE.search(path) or not storable(path):
            await _send_problem(send, 404, "not_found", "no resource has this name")
            return
        query: bytes = scope.get("query_string", b"")
        if query:
            # As Starlette decodes it (latin-1 text, percent-escapes as UTF-8 with
            # replacement), so the check sees what the route would.
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if CONTROL_RE.search(name) or CONTROL_RE.search(value):
                    loc = ["query", name if not CONTROL_RE.search(name) else "(a name)"]
                    await self._invalid(send, loc)
                    return
        if not path.startswith(self.body_prefix) or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        # FastAPI may parse a body without a content type as JSON too.
        if content_type and not _JSON_TYPE.match(content_type):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if _SUSPECT_ESCAPE.search(body):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # the route answers malformed JSON itself
            at = unstorable_at(parsed)
            if at is not None:
                await self._invalid(send, ["body", *(str(p) for p in at)])
                return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _invalid(send: Send, loc: list[str]) -> None:
        await _send_problem(send, 422, "validation_failed", "the request is not valid",
                            errors=[{"loc": loc, "msg": "contains a character that cannot be "
                                     "stored (NUL, a control character or a lone surrogate)",
                                     "type": "unstorable_characters"}])


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

"""ASGI middleware for any Starlette/FastAPI app: verify the access token of every request.

The verified token lands in `scope["state"]["tessera_token"]` (in Starlette,
`request.state.tessera_token`); failures answer 401 with an RFC 6750 / RFC 9449
`WWW-Authenticate` challenge and never reach the app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from tessera.sdk.verify import TokenVerificationError, Verifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
STATE_KEY = "tessera_token"


class TesseraMiddleware:
    """Pure ASGI: no framework dependency; `exempt` paths (e.g. health checks) pass through."""

    def __init__(self, app: ASGIApp, verifier: Verifier, *, exempt: Iterable[str] = (),
                 public_url: str | None = None) -> None:
        self.app = app
        self.verifier = verifier
        self.exempt = frozenset(exempt)
        # Behind a proxy, the URL the client used (for DPoP htu) is not the one we see.
        self.public_url = public_url.rstrip("/") if public_url else None

    def _url(self, scope: Scope, headers: dict[str, str]) -> str:
        path = scope.get("root_path", "") + scope.get("path", "/")
        if self.public_url:
            return self.public_url + path
        host = headers.get("host") or "{}:{}".format(*scope.get("server", ("localhost", 80)))
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        dpop: list[str] = []
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            if key == "dpop":
                dpop.append(value.decode("latin-1"))
            else:
                headers[key] = value.decode("latin-1")
        try:
            token = await self.verifier.averify(
                headers.get("authorization"), method=scope["method"],
                url=self._url(scope, headers), dpop=",".join(dpop) if dpop else None)
        except TokenVerificationError as exc:
            await _deny(send, exc)
            return
        scope.setdefault("state", {})[STATE_KEY] = token
        await self.app(scope, receive, send)


async def _deny(send: Send, exc: TokenVerificationError) -> None:
    body = json.dumps({"error": exc.error, "error_description": exc.description}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"www-authenticate", exc.www_authenticate.encode()),
               (b"cache-control", b"no-store")]
    if exc.nonce:
        headers.append((b"dpop-nonce", exc.nonce.encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

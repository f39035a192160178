"""The floor for bench/token_issuance.py: a bare ASGI app under the same uvicorn settings that
reads the form body and answers a token-sized JSON document, doing nothing else.

    uvicorn --app-dir bench _bare_token_app:app
"""

from __future__ import annotations

import json
from typing import Any

BODY = json.dumps({"access_token": "x" * 560, "token_type": "Bearer", "expires_in": 900,
                   "scope": "read"}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": BODY})

"""Client certificates from the TLS layer into the ASGI scope (the ASGI TLS extension).

uvicorn does not put the peer certificate in the scope, so `tessera serve --tls-*` runs uvicorn
with `TLSProtocol` (the bounded protocol of `tessera.api.http_limits`, as without TLS): on each
connection it reads the verified peer certificate from the SSL object and adds `scope["extensions"]["tls"]` as the ASGI TLS extension describes
(https://asgi.readthedocs.io/en/latest/specs/tls.html): `client_cert_chain` holds PEM strings.
Any ASGI server that implements the extension works the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tessera.api.http_limits import LimitedHttpToolsProtocol


def client_cert_der(scope: Scope) -> bytes | None:
    """DER of the verified TLS client certificate of this request, or None."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return ssl.PEM_cert_to_DER_cert(chain[0])


def certificate_binding_holds(scope: Scope, claims: dict[str, Any]) -> bool:
    """RFC 8705 §3: a token with `cnf.x5t#S256` is only good over a connection presenting
    that certificate. Unbound tokens always hold."""
    import base64
    import hashlib
    import hmac

    cnf = claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if bound is None:
        return True
    der = client_cert_der(scope)
    if der is None or not isinstance(bound, str):
        return False
    presented = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return hmac.compare_digest(bound, presented)


class _WithTLS:
    """Wraps the app for one connection and adds the TLS extension to each request's scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self._tls}
        await self._app(scope, receive, send)


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {"server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None, "client_cert_error": None,
            "tls_version": None, "cipher_suite": None,
            "tessera_cipher": cipher[0] if cipher else None}


class TLSProtocol(LimitedHttpToolsProtocol):
    """The bounded HTTP protocol, plus the ASGI TLS extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            self.app = _WithTLS(self.app, tls)

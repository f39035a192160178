"""uvicorn's httptools protocol, bounded: head size, header count, head and body deadlines.

uvicorn[standard] parses HTTP/1.1 with httptools (llhttp), which takes a request head of any
size: one unauthenticated request with a 64 MB header had a worker buffer all of it (RSS
145 -> 370 MB). And its only timer is the keep-alive one, armed once a response is complete,
so a client that connects and trickles a header byte every few seconds keeps its connection
for as long as it likes. uvicorn has no option for either (`h11_max_incomplete_event_size`
bounds the h11 parser only), hence this subclass. It adds, per connection:

- a head size limit: bytes are counted as they arrive and no more than the limit reach the
  parser; a head that has not ended within it gets 431 and the connection closes (RFC 6585
  §5), so a worker holds at most the limit of any one head;
- a header count limit (431 too);
- a head deadline, from the connection (or the first byte of a later request) to its last
  header: 408 and close (RFC 9110 §15.5.9); a connection that sent nothing is just closed;
- a body deadline, from the last header to the end of the body: 408 unless the application
  has begun its answer, and close.

The idle time between two requests stays uvicorn's keep-alive timeout and the connection
count its `limit_concurrency` (503): `tessera.serving.uvicorn_options` sets both.

The fast path costs one addition and one comparison per read: a request whose head, and body,
each arrive within one read arms no timer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tessera.config import HTTPSettings


@dataclass(frozen=True)
class HTTPLimits:
    """The per-connection bounds `LimitedHttpToolsProtocol` enforces (from `HTTPSettings`)."""

    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_settings(cls, http: HTTPSettings) -> HTTPLimits:
        return cls(max_header_bytes=http.max_header_bytes, max_headers=http.max_headers,
                   header_timeout=http.header_timeout, body_timeout=http.body_timeout)


class _TooManyHeaders(Exception):
    """Raised from the parser's callback to stop parsing a request with too many fields."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with the bounds of `HTTPLimits`; uvicorn builds one per connection
    (pass it as `functools.partial(LimitedHttpToolsProtocol, limits=...)`)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 limits: HTTPLimits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._max_head = limits.max_header_bytes
        # INVARIANT: bytes of the current request head received so far (>= 0) while a head
        # is awaited or being read; -1 from the end of a head to the end of its body.
        self._head_bytes = 0
        self._too_many_headers = False
        self._deadline: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is covered by the head deadline too.
        self._arm(self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Replaces uvicorn's (keep-alive timer off, feed the parser, answer its errors) to
        # count the head's bytes before they reach the parser.
        self._unset_keepalive_if_required()
        head = self._head_bytes
        if head < 0 or head + len(data) <= self._max_head:
            if head >= 0:
                self._head_bytes = head + len(data)
            if not self._feed(data):
                return
        else:
            # This read may take the head past its limit: feed only what fits. If the head
            # ended in there the rest is its body (or the next request); else refuse.
            view = memoryview(data)
            room = self._max_head - head
            self._head_bytes = self._max_head
            if not self._feed(view[:room]):
                return
            if self._head_bytes == self._max_head:
                self._refuse(431, "Request Header Fields Too Large")
                return
            if not self.transport.is_closing() and not self._feed(view[room:]):
                return
        if self._deadline is None and not self.transport.is_closing():
            if self._head_bytes > 0:  # a head has begun and not ended
                self._arm(self._limits.header_timeout)
            elif self._head_bytes < 0:  # a body has begun and not ended
                self._arm(self._limits.body_timeout)

    # -- parser callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if len(self.headers) > self._limits.max_headers:
            self._too_many_headers = True
            raise _TooManyHeaders
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- helpers -------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse `data`; False when the connection was refused (and is closing)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._too_many_headers:
                self._refuse(431, "Request Header Fields Too Large")
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return True

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_bytes > 0:
            self._refuse(408, "Request Timeout")
            return
        cycle = self.cycle
        if self._head_bytes < 0 and cycle is not None and not cycle.response_started:
            # The application may be waiting for the body: it now reads a disconnect, and
            # whatever it answers is dropped (uvicorn's cycle ignores sends once disconnected).
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(408, "Request Timeout")
            return
        self.transport.close()  # idle since connecting, or already answering

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` without the application and close the connection."""
        self._disarm()
        self.logger.warning("%s - %d %s", self._peer(), status, reason)
        body = reason.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


__all__ = ["HTTPLimits", "LimitedHttpToolsProtocol"]

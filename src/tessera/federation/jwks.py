"""Fetching trusted issuers' discovery documents and JWKS, defensively, with a cache.

OpenID Connect Discovery 1.0 §4 (https://openid.net/specs/openid-connect-discovery-1_0.html):
the document is at `{issuer}/.well-known/openid-configuration` and its `issuer` MUST equal the
issuer it was fetched for (§4.3). Fetches refuse plain HTTP (unless allowed for development),
redirects to another host, documents over the size limit, and slow servers: one deadline
(`fetch_timeout`) bounds the whole fetch of an issuer's keys, discovery document, JWKS and
redirects together, including the wait for another request already fetching them.

The fetcher never touches the database: callers fetch with no transaction open (an issuer that
never answers must not hold a database lock), and `cached` answers from memory only.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from tessera.config import FederationSettings

MAX_REDIRECTS = 3


class FetchError(Exception):
    """A discovery document or JWKS could not be fetched safely (message is log-safe)."""


@dataclass
class _Entry:
    jwks: dict[str, Any]
    fetched_at: float
    expires_at: float
    last_kid_refetch: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_url(url: str, allow_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http:
        raise FetchError("only https:// URLs are fetched (set federation.allow_insecure_http "
                         "for development)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FetchError("not an http(s) URL")
    if parts.username or parts.password or parts.fragment:
        raise FetchError("URL must not carry credentials or a fragment")


class JWKSFetcher:
    """Fetches JSON documents safely and caches each issuer's JWKS."""

    def __init__(self, settings: FederationSettings, now: Callable[[], float] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 monotonic: Callable[[], float] | None = None) -> None:
        self._settings = settings
        self._now = now or time.time
        # Deadlines are measured on a monotonic clock (never the wall clock, which can jump).
        self._monotonic = monotonic or time.monotonic
        self._transport = transport
        self._cache: dict[str, _Entry] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def deadline(self) -> float:
        """The instant (on this fetcher's monotonic clock) by which a fetch starting now ends."""
        return self._monotonic() + self._settings.fetch_timeout

    def get_json(self, url: str, deadline: float | None = None) -> dict[str, Any]:
        """GET `url`: same-host redirects only, done by `deadline`, a size limit, a JSON object.

        Without a deadline the fetch gets the whole `fetch_timeout`; a caller making several
        requests for one purpose passes one deadline to all of them."""
        s = self._settings
        check_url(url, s.allow_insecure_http)
        if deadline is None:
            deadline = self.deadline()
        origin = urlsplit(url)
        # The system trust store, plus the configured CA file when there is one.
        verify = ssl.create_default_context()
        if s.ca_bundle:
            verify.load_verify_locations(cafile=str(s.ca_bundle))
        with httpx.Client(follow_redirects=False, verify=verify, transport=self._transport,
                          trust_env=False) as http:
            for _ in range(MAX_REDIRECTS + 1):
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    raise FetchError("fetch timed out")
                try:
                    with http.stream("GET", url, timeout=httpx.Timeout(remaining),
                                     headers={"Accept": "application/json"}) as resp:
                        if resp.is_redirect:
                            target = urljoin(url, resp.headers.get("location", ""))
                            parts = urlsplit(target)
                            if (parts.scheme, parts.hostname, parts.port) != (
                                    origin.scheme, origin.hostname, origin.port):
                                raise FetchError("redirect to another host refused")
                            check_url(target, s.allow_insecure_http)
                            url = target
                            continue
                        if resp.status_code != 200:
                            raise FetchError(f"HTTP {resp.status_code}")
                        body = self._read(resp, deadline)
                        if self._monotonic() > deadline:
                            raise FetchError("fetch timed out")
                except httpx.TimeoutException as exc:
                    raise FetchError("fetch timed out") from exc
                except httpx.HTTPError as exc:
                    raise FetchError(f"fetch failed: {type(exc).__name__}") from exc
                try:
                    doc = json.loads(body)
                except ValueError as exc:
                    raise FetchError("response is not JSON") from exc
                if not isinstance(doc, dict):
                    raise FetchError("response is not a JSON object")
                return doc
        raise FetchError("too many redirects")

    def _read(self, resp: httpx.Response, deadline: float) -> bytes:
        limit = self._settings.max_document_bytes
        declared = resp.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise FetchError("document too large")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError("document too large")
            if self._monotonic() > deadline:
                raise FetchError("fetch timed out")
            chunks.append(chunk)
        return b"".join(chunks)

    def discover_jwks_uri(self, issuer: str, deadline: float | None = None) -> str:
        doc = self.get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", deadline)
        # OIDC Discovery §4.3: the issuer value returned MUST be identical to the one used.
        if doc.get("issuer") != issuer:
            raise FetchError("discovery document names a different issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise FetchError("discovery document has no jwks_uri")
        return uri

    def _fetch(self, issuer: str, jwks_uri: str | None, deadline: float) -> dict[str, Any]:
        # INVARIANT: discovery and JWKS share one deadline; the JWKS request gets what the
        # discovery request left, not a fresh timeout of its own.
        uri = jwks_uri or self.discover_jwks_uri(issuer, deadline)
        jwks = self.get_json(uri, deadline)
        if not isinstance(jwks.get("keys"), list):
            raise FetchError("JWKS has no keys array")
        return jwks

    def cached(self, issuer: str) -> dict[str, Any]:
        """The issuer's JWKS from memory, while fresh; never a network request.

        Raises FetchError (naming the last fetch's failure, if one failed) when there is none."""
        with self._lock:
            entry = self._cache.get(issuer)
            error = self._errors.get(issuer)
        if entry is not None and self._now() < entry.expires_at:
            return entry.jwks
        raise FetchError(error or "keys not fetched")

    def jwks(self, issuer: str, jwks_uri: str | None, kid: str | None) -> dict[str, Any]:
        """The issuer's JWKS: cached until expiry; refetched for an unknown kid, rate-limited.

        Network I/O: call it with no database transaction open."""
        deadline = self.deadline()
        try:
            return self._jwks(issuer, jwks_uri, kid, deadline)
        except FetchError as exc:
            with self._lock:
                self._errors[issuer] = str(exc)
            raise

    def _jwks(self, issuer: str, jwks_uri: str | None, kid: str | None,
              deadline: float) -> dict[str, Any]:
        with self._lock:
            entry = self._cache.get(issuer)
        now = self._now()
        if entry is not None and now < entry.expires_at and (
                kid is None or _has_kid(entry.jwks, kid)):
            return entry.jwks
        lock = entry.lock if entry is not None else threading.Lock()
        # Waiting for another request's fetch of the same issuer counts against the deadline.
        if not lock.acquire(timeout=max(deadline - self._monotonic(), 0.0)):
            raise FetchError("fetch timed out")
        try:
            with self._lock:
                entry = self._cache.get(issuer)
            now = self._now()
            if entry is not None:
                fresh = now < entry.expires_at
                if fresh and (kid is None or _has_kid(entry.jwks, kid)):
                    return entry.jwks
                if fresh:
                    # An unknown kid: refetch (the issuer may have rotated), at a bounded rate.
                    if now - entry.last_kid_refetch < self._settings.min_refetch_seconds:
                        return entry.jwks
                    entry.last_kid_refetch = now
            jwks = self._fetch(issuer, jwks_uri, deadline)
            new = _Entry(jwks=jwks, fetched_at=now,
                         expires_at=now + self._settings.jwks_cache_seconds, lock=lock,
                         last_kid_refetch=entry.last_kid_refetch if entry else float("-inf"))
            with self._lock:
                self._cache[issuer] = new
                self._errors.pop(issuer, None)
            return jwks
        finally:
            lock.release()

    def forget(self, issuer: str) -> None:
        with self._lock:
            self._cache.pop(issuer, None)
            self._errors.pop(issuer, None)


def _has_kid(jwks: dict[str, Any], kid: str) -> bool:
    return any(isinstance(k, dict) and k.get("kid") == kid for k in jwks.get("keys", []))

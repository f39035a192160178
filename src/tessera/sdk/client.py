"""Agent-side client: tokens with `private_key_jwt` (RFC 7523), optionally DPoP-bound
(RFC 9449), renewed before expiry by one caller at a time, token exchange (RFC 8693), and an
httpx `Auth` that puts a fresh token (and proof) on every request.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tessera.sdk._jose import (
    ASSERTION_TYPE,
    AsymmetricKey,
    alg_for,
    client_assertion,
    dpop_proof,
    import_private,
)

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class TokenError(Exception):
    """The authorization server refused a token request (`error` is the OAuth code)."""

    def __init__(self, error: str, description: str | None, status: int) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class Token:
    access_token: str
    token_type: str
    expires_at: float
    renew_at: float
    scope: str | None = None
    refresh_token: str | None = None

    @property
    def is_dpop(self) -> bool:
        return self.token_type.lower() == "dpop"


class TesseraClient:
    """Obtains and renews an agent's access tokens. Thread-safe and asyncio-safe.

    `renew_fraction` of the lifetime before expiry (at least `min_renew_seconds`), minus a
    random jitter, the token is renewed: callers that arrive while another caller is renewing
    keep using the still-valid token instead of piling onto the token endpoint.
    """

    def __init__(self, issuer: str, client_id: str, private_key: dict[str, Any] | AsymmetricKey,
                 *, kid: str | None = None, alg: str | None = None, scope: str | None = None,
                 resource: str | list[str] | None = None,
                 dpop_key: dict[str, Any] | AsymmetricKey | None = None,
                 token_endpoint: str | None = None, http: httpx.Client | None = None,
                 async_http: httpx.AsyncClient | None = None, renew_fraction: float = 0.2,
                 min_renew_seconds: float = 30,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._key = import_private(private_key)
        self._kid = kid or (private_key.get("kid") if isinstance(private_key, dict) else None)
        self._alg = alg_for(self._key, alg or (private_key.get("alg")
                                                if isinstance(private_key, dict) else None))
        self.scope = scope
        self.resources = [resource] if isinstance(resource, str) else list(resource or [])
        self.dpop_key = import_private(dpop_key) if dpop_key is not None else None
        self._dpop_alg = alg_for(self.dpop_key) if self.dpop_key is not None else None
        self.token_endpoint = token_endpoint or f"{self.issuer}/oauth2/token"
        self._http = http
        self._async_http = async_http
        self._renew_fraction = renew_fraction
        self._min_renew = min_renew_seconds
        self._clock = clock
        self._token: Token | None = None
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._nonces: dict[str, str] = {}
        self.requests = 0

    # -- DPoP ------------------------------------------------------------------------------

    def proof(self, method: str, url: str, access_token: str | None = None) -> str | None:
        """A DPoP proof for one request, with the server's last nonce for that origin."""
        if self.dpop_key is None or self._dpop_alg is None:
            return None
        origin = self._origin(url)
        return dpop_proof(self.dpop_key, method, url, alg=self._dpop_alg,
                          access_token=access_token, nonce=self._nonces.get(origin),
                          now=self._clock())

    @staticmethod
    def _origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def remember_nonce(self, url: str, response: httpx.Response) -> bool:
        """Store a DPoP-Nonce from a response; True when the response asks for a retry."""
        nonce = response.headers.get("dpop-nonce")
        if nonce:
            self._nonces[self._origin(url)] = nonce
        if response.status_code == 400:
            try:
                return bool(nonce) and response.json().get("error") == "use_dpop_nonce"
            except ValueError:
                return False
        return bool(nonce) and response.status_code == 401 and \
            'use_dpop_nonce' in response.headers.get("www-authenticate", "")

    # -- token requests --------------------------------------------------------------------

    def _form(self, grant: dict[str, Any]) -> dict[str, Any]:
        form = dict(grant)
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(self._key, self.client_id,
                                                    self.token_endpoint, kid=self._kid,
                                                    alg=self._alg, now=self._clock())
        return form

    def _grant(self) -> dict[str, Any]:
        if self._token is not None and self._token.refresh_token:
            return {"grant_type": "refresh_token", "refresh_token": self._token.refresh_token}
        grant: dict[str, Any] = {"grant_type": "client_credentials"}
        if self.scope:
            grant["scope"] = self.scope
        if self.resources:
            grant["resource"] = self.resources
        return grant

    def _parse(self, resp: httpx.Response) -> Token:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or "access_token" not in body:
            raise TokenError(str(body.get("error", "server_error")),
                             body.get("error_description"), resp.status_code)
        now = self._clock()
        ttl = float(body.get("expires_in", 300))
        margin = max(self._min_renew, ttl * self._renew_fraction)
        margin = min(margin, ttl / 2)
        # Jitter spreads many agents' renewals over a window instead of one instant.
        renew_at = now + ttl - margin - random.uniform(0, margin / 2)
        return Token(access_token=body["access_token"], token_type=body.get("token_type",
                                                                            "Bearer"),
                     expires_at=now + ttl, renew_at=renew_at, scope=body.get("scope"),
                     refresh_token=body.get("refresh_token"))

    def _post(self, grant: dict[str, Any]) -> Token:
        http = self._http or httpx.Client(timeout=10)
        try:
            for _attempt in range(2):
                headers = {}
                proof = self.proof("POST", self.token_endpoint)
                if proof:
                    headers["DPoP"] = proof
                self.requests += 1
                resp = http.post(self.token_endpoint, data=self._form(grant), headers=headers)
                if not self.remember_nonce(self.token_endpoint, resp):
                    break
            return self._parse(resp)
        finally:
            if self._http is None:
                http.close()

    async def _apost(self, grant: dict[str, Any]) -> Token:
        http = self._async_http or httpx.AsyncClient(timeout=10)
        try:
            for _attempt in range(2):
                headers = {}
                proof = self.proof("POST", self.token_endpoint)
                if proof:
                    headers["DPoP"] = proof
                self.requests += 1
                resp = await http.post(self.token_endpoint, data=self._form(grant),
                                       headers=headers)
                if not self.remember_nonce(self.token_endpoint, resp):
                    break
            return self._parse(resp)
        finally:
            if self._async_http is None:
                await http.aclose()

    def _fresh(self) -> Token | None:
        tok = self._token
        return tok if tok is not None and self._clock() < tok.renew_at else None

    def _usable(self) -> Token | None:
        tok = self._token
        return tok if tok is not None and self._clock() < tok.expires_at - 5 else None

    def token(self) -> Token:
        """A valid token, renewed when due (one renewal at a time)."""
        tok = self._fresh()
        if tok is not None:
            return tok
        usable = self._usable()
        # Someone else is renewing and the current token still works: use it.
        if not self._lock.acquire(blocking=usable is None):
            return usable  # type: ignore[return-value]
        try:
            tok = self._fresh()
            if tok is None:
                tok = self._renew(self._post)
            return tok
        finally:
            self._lock.release()

    async def atoken(self) -> Token:
        tok = self._fresh()
        if tok is not None:
            return tok
        usable = self._usable()
        self._alock = self._alock or asyncio.Lock()
        if self._alock.locked() and usable is not None:
            return usable
        async with self._alock:
            tok = self._fresh()
            if tok is None:
                try:
                    tok = await self._apost(self._grant())
                except TokenError:
                    if self._token is None or not self._token.refresh_token:
                        raise
                    self._token = None  # the refresh token died: start over
                    tok = await self._apost(self._grant())
                self._token = tok
            return tok

    def _renew(self, post: Callable[[dict[str, Any]], Token]) -> Token:
        try:
            tok = post(self._grant())
        except TokenError:
            if self._token is None or not self._token.refresh_token:
                raise
            self._token = None  # the refresh token died: start over with a new grant
            tok = post(self._grant())
        self._token = tok
        return tok

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after the resource server said it is invalid)."""
        self._token = None

    # -- delegation ------------------------------------------------------------------------

    def _exchange_grant(self, subject_token: str, scope: str | None,
                        resource: str | list[str] | None, audience: str | None,
                        actor_token: str | None) -> dict[str, Any]:
        grant: dict[str, Any] = {"grant_type": EXCHANGE_GRANT, "subject_token": subject_token,
                                 "subject_token_type": ACCESS_TOKEN_TYPE,
                                 "requested_token_type": ACCESS_TOKEN_TYPE}
        if scope:
            grant["scope"] = scope
        if resource:
            grant["resource"] = [resource] if isinstance(resource, str) else list(resource)
        if audience:
            grant["audience"] = audience
        if actor_token:
            grant["actor_token"] = actor_token
            grant["actor_token_type"] = ACCESS_TOKEN_TYPE
        return grant

    def exchange(self, subject_token: str, *, scope: str | None = None,
                 resource: str | list[str] | None = None, audience: str | None = None,
                 actor_token: str | None = None) -> Token:
        """RFC 8693: a token that says this agent acts for the subject token's subject."""
        return self._post(self._exchange_grant(subject_token, scope, resource, audience,
                                               actor_token))

    async def aexchange(self, subject_token: str, *, scope: str | None = None,
                        resource: str | list[str] | None = None, audience: str | None = None,
                        actor_token: str | None = None) -> Token:
        return await self._apost(self._exchange_grant(subject_token, scope, resource,
                                                      audience, actor_token))

    def auth(self) -> TesseraAuth:
        return TesseraAuth(self)


class TesseraAuth(httpx.Auth):
    """httpx authentication: a fresh token, and a DPoP proof when the token is DPoP-bound.

    Retries once when the resource server asks for a DPoP nonce or rejects the token.
    """

    def __init__(self, client: TesseraClient, token: Token | None = None) -> None:
        self.client = client
        self._fixed = token  # e.g. a delegated token from `exchange`

    def _apply(self, request: httpx.Request, tok: Token) -> None:
        url = str(request.url)
        if tok.is_dpop:
            request.headers["Authorization"] = f"DPoP {tok.access_token}"
            proof = self.client.proof(request.method, url, tok.access_token)
            if proof:
                request.headers["DPoP"] = proof
        else:
            request.headers["Authorization"] = f"Bearer {tok.access_token}"

    def _retry(self, request: httpx.Request, response: httpx.Response) -> bool:
        if response.status_code != 401:
            return False
        if self.client.remember_nonce(str(request.url), response):
            return True
        if self._fixed is None and 'invalid_token' in response.headers.get(
                "www-authenticate", ""):
            self.client.invalidate()
            return True
        return False

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request,
                                                                   httpx.Response, None]:
        self._apply(request, self._fixed or self.client.token())
        response = yield request
        if self._retry(request, response):
            self._apply(request, self._fixed or self.client.token())
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                              httpx.Response]:
        self._apply(request, self._fixed or await self.client.atoken())
        response = yield request
        if self._retry(request, response):
            self._apply(request, self._fixed or await self.client.atoken())
            yield request

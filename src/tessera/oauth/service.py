"""The token endpoint's logic (RFC 6749 §4.4 client credentials) over the registry and keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.audit.groupcommit import WriteUnit
from tessera.clock import Clock
from tessera.config import TokenSettings
from tessera.db.engine import make_session_factory
from tessera.errors import InvalidRequest, OAuthError, WouldBlock
from tessera.identity import IdentityService
from tessera.identity.schemas import SCOPE_TOKEN
from tessera.identity.service import ClientView
from tessera.keys.service import KeyService
from tessera.oauth import deferred
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.deferred import HOOK_REV, HOOK_SQL, ClientCache, DeferredReplay, StaleClient
from tessera.oauth.models import UsedJTIRow
from tessera.oauth.ports import Client, ClientKey, ClientStore, ReplayCache
from tessera.oauth.rfc7523_client_assertion import (
    AssertionRejected,
    AuthenticatedClient,
    ClientAssertionVerifier,
)

_SCOPE_RE = re.compile(SCOPE_TOKEN)

_T = TypeVar("_T")


async def _in_thread(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run blocking work on a worker thread. The same thread pool and limiter the web
    framework's helper uses, called through anyio directly so the domain stays free of it."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


def client_from_view(view: ClientView, now: datetime) -> Client:
    """The protocol's view of a registry client, usable and keys evaluated at `now`."""
    return Client(client_id=view.id, usable=view.usable_at(now),
                  allowed_scopes=view.allowed_scopes, allowed_audiences=view.allowed_audiences,
                  expires_at=view.expires_at, handle=view, kind=view.kind,
                  token_ttl=view.token_ttl, dpop_required=view.dpop_required,
                  may_act_for=view.may_act_for, spiffe_id=view.spiffe_id,
                  keys=[ClientKey(kid=k.kid, jwk=k.jwk, handle=k) for k in view.keys_at(now)])


def _constant_span(view: ClientView, now: datetime
                   ) -> tuple[datetime | None, datetime | None]:
    """[since, until): the instants around `now` at which `client_from_view(view, _)` gives
    what it gives at `now`. Its `usable` and `keys` change only where an expiry (`> now`, of
    the identity or of a key) is crossed: since the latest one passed, until the next one."""
    since: datetime | None = None
    until: datetime | None = None
    for expires in (view.expires_at, *(k.expires_at for k in view.keys)):
        if expires is None:
            continue
        if expires > now:
            if until is None or expires < until:
                until = expires
        elif since is None or expires > since:
            since = expires
    return since, until


class ClientMemo:
    """`client_from_view` results, reused for as long as their view is the one cached and the
    request's `now` is in their constant span: the same Client a fresh call would build, built
    once per view instead of per request. (Clients are read, never mutated, by the protocol
    code, so one may be shared by concurrent requests, as the view under it already is.)"""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._entries: dict[str, tuple[ClientView, datetime | None, datetime | None, Client]] \
            = {}

    def client(self, view: ClientView, now: datetime) -> Client:
        entry = self._entries.get(view.id)
        if entry is not None and entry[0] is view and (entry[1] is None or entry[1] <= now) \
                and (entry[2] is None or now < entry[2]):
            return entry[3]
        client = client_from_view(view, now)
        since, until = _constant_span(view, now)
        if len(self._entries) >= self._max and view.id not in self._entries:
            self._entries.clear()
        self._entries[view.id] = (view, since, until, client)
        return client


def presented_auth_methods(req: TokenRequest) -> list[str]:
    """The client authentication methods a request uses, whether or not this server supports
    them (RFC 6749 §2.3.1 HTTP Basic and the form's client_secret, RFC 7523 assertions, RFC
    8705 certificates).

    A TLS client certificate beside a client assertion is not a second method: the assertion
    authenticates the client and the certificate only binds the token issued (RFC 8705 §3;
    §4: certificate-bound tokens are independent of mutual-TLS client authentication). Beside
    anything else, or alone, the certificate is `tls_client_auth` (§2)."""
    methods = []
    if "client_assertion" in req.form or "client_assertion_type" in req.form:
        methods.append("private_key_jwt")
    if "client_secret" in req.form:
        methods.append("client_secret_post")
    scheme = req.headers.get("authorization", "").lstrip().partition(" ")[0]
    if scheme.lower() == "basic":
        methods.append("client_secret_basic")
    if req.client_cert is not None and "private_key_jwt" not in methods:
        methods.append("tls_client_auth")
    return methods


def _jti_replayed(issuer: str) -> AssertionRejected:
    return AssertionRejected("jti replayed", issuer)


def _keys_with(client: Client, kid: str | None) -> list[ClientKey]:
    return [k for k in client.keys if kid is None or k.kid == kid]


class SqlClients:
    """ClientStore over the identity registry, bound to one session."""

    def __init__(self, session: Session, identities: IdentityService) -> None:
        self._session = session
        self._identities = identities

    def find_client(self, client_id: str) -> Client | None:
        view = self._identities.client_view(self._session, client_id)
        return None if view is None else client_from_view(view, self._identities.now())

    def client_keys(self, client: Client, kid: str | None) -> list[ClientKey]:
        return _keys_with(client, kid)


class CachedClients:
    """ClientStore over this node's `ClientCache`; each view used is checked at commit (its
    rev goes into the request's unit)."""

    def __init__(self, cache: ClientCache, req: TokenRequest, memo: ClientMemo) -> None:
        self._cache = cache
        self._req = req
        self._memo = memo

    def find_client(self, client_id: str) -> Client | None:
        view = self._cache.get(client_id, fresh=self._req.fresh, io=self._req.io)
        if view is None:
            return None
        self._req.cached = True
        self._req.unit.add(HOOK_REV, (view.id, view.rev))
        return self._memo.client(view, self._req.now)

    def client_keys(self, client: Client, kid: str | None) -> list[ClientKey]:
        return _keys_with(client, kid)


class SqlReplayCache:
    """ReplayCache on a table with a primary key: one insert wins across every node."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def use_once(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        won = deferred.insert_jtis(self._session, [
            {"issuer": issuer, "jti": jti, "expires_at": expires_at}])
        return (issuer, jti) in won

    @staticmethod
    def purge(session: Session, now: datetime) -> int:
        result = session.execute(delete(UsedJTIRow).where(UsedJTIRow.expires_at < now))
        return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class TokenResponse:
    body: dict[str, Any]
    claims: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TokenRequest:
    """One token request as the grant handlers see it (transport details included).

    Storage goes through the request, so that the common case needs no transaction of its own:
    until a handler touches `session`, clients come from the node's cache and the writes
    (replay-cache uses, usage stamps, audit events) wait in `unit` for the group commit. Once a
    session is open (a handler needed it, or the caller passed `opened`), everything goes to it
    directly and the unit is flushed into it before it commits.
    """

    form: dict[str, str]
    resources: list[str]
    ctx: RequestContext
    now: datetime
    method: str = "POST"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    client_cert: bytes | None = None  # DER of a verified TLS client certificate, if any
    opened: Session | None = None
    sessions: Callable[[], Session] | None = None
    unit: WriteUnit = field(default_factory=WriteUnit)
    fresh: bool = False  # read clients from the database, not the node's cache
    cached: bool = False  # a cached client view was used
    io: bool = True  # False on the event loop: anything needing the database raises WouldBlock

    @property
    def session(self) -> Session:
        if self.opened is None:
            if not self.io:
                raise WouldBlock("the request needs a database session")
            if self.sessions is None:
                raise RuntimeError("this token request has no session factory")
            self.opened = self.sessions()
        return self.opened

    def replay_cache(self, replayed: Callable[[str], Exception]) -> ReplayCache:
        """Immediate in an open session; else deferred to the commit (`replayed(issuer)` is
        the refusal then)."""
        if self.opened is not None:
            return SqlReplayCache(self.opened)
        return DeferredReplay(self.unit, replayed)

    def write(self, statements: list[tuple[Any, dict[str, Any]]]) -> None:
        if self.opened is not None:
            for stmt, params in statements:
                self.opened.execute(stmt, params)
        else:
            for statement in statements:
                self.unit.add(HOOK_SQL, statement)

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


GrantHandler = Callable[[TokenRequest], TokenResponse]
ClientAuthenticator = Callable[[TokenRequest], "AuthenticatedClient | None"]


class TokenService:
    """Authenticates clients and issues RFC 9068 access tokens.

    Grant types and client-authentication methods are pluggable: `grants` maps a grant_type to
    its handler, `authenticators` are tried in order (each returns None when the request does
    not use its method). The built-ins are client_credentials and private_key_jwt.
    """

    def __init__(self, *, issuer: str, clock: Clock, keys: KeyService,
                 identities: IdentityService, audit: AuditService,
                 settings: TokenSettings, sessions: sessionmaker[Session] | None = None) -> None:
        self.issuer = issuer
        self.token_endpoint = f"{issuer}/oauth2/token"
        self._clock = clock
        self._keys = keys
        self._identities = identities
        self._audit = audit
        self._settings = settings
        self.grants: dict[str, GrantHandler] = {"client_credentials": self._client_credentials}
        self.authenticators: list[ClientAuthenticator] = [self._private_key_jwt]
        # What metadata advertises; whoever appends an authenticator names its methods here.
        self.auth_methods: list[str] = ["private_key_jwt"]
        self.certificate_bound_tokens = False
        self._sessions = sessions
        self._assertion_audiences = frozenset({self.issuer, self.token_endpoint})
        self.clients: ClientCache | None = None
        self._client_memo = ClientMemo()
        if sessions is not None:
            self.clients = ClientCache(make_session_factory(sessions.kw["bind"], readonly=True),
                                       identities)
            deferred.install(audit)

    def verifier(self, req: TokenRequest) -> ClientAssertionVerifier:
        clients: ClientStore = SqlClients(req.session, self._identities) \
            if req.opened is not None or self.clients is None \
            else CachedClients(self.clients, req, self._client_memo)
        return ClientAssertionVerifier(
            clients, req.replay_cache(_jti_replayed), audiences=self._assertion_audiences,
            max_age=self._settings.assertion_max_age, leeway=self._settings.leeway)

    async def handle_async(self, form: dict[str, str], resources: list[str],
                           ctx: RequestContext, **transport: Any) -> TokenResponse:
        """`handle` for an event loop. The common request (client cached, nothing but the
        unit to write) is served on the loop: no thread hop, and it awaits the group commit
        instead of blocking a thread on it. Anything else (a cache miss, a grant that needs a
        session, a refusal that used a cached view, a stale view) is redone by `handle` in a
        worker thread, which costs a second verification but only off the common path."""
        req = TokenRequest(form=form, resources=resources, ctx=ctx, now=self._clock.now(),
                           io=False, **transport)
        try:
            response = self._dispatch(req)
        except WouldBlock:
            return await _in_thread(self.handle, form, resources, ctx, **transport)
        except OAuthError as refusal:
            if req.cached:  # it may rest on a stale view: `handle` re-checks the database
                return await _in_thread(self.handle, form, resources, ctx,
                                        fresh_first=True, **transport)
            # Refused before any client was looked up (malformed request or assertion): the
            # database cannot change the answer, so it is only audited, not worked out again.
            await _in_thread(self.refuse, refusal, form, ctx)
            raise
        future = self._audit.submit_unit(req.unit)
        if future is None:
            return await _in_thread(self.handle, form, resources, ctx, **transport)
        try:
            await future
        except StaleClient as stale:
            if self.clients is not None:
                self.clients.evict(stale.client_id)
            return await _in_thread(self.handle, form, resources, ctx, **transport)
        except OAuthError as failure:  # a replayed jti, found at commit
            await _in_thread(self.refuse, failure, form, ctx)
            raise
        return response

    def handle(self, form: dict[str, str], resources: list[str], ctx: RequestContext,
               *, fresh_first: bool = False, **transport: Any) -> TokenResponse:
        """Serve one token request end to end: committed and audited when it returns; a
        refusal is audited and raised as its `OAuthError`."""
        if self._sessions is None:
            raise RuntimeError("TokenService.handle needs a session factory")
        for attempt in range(3):
            req = TokenRequest(form=form, resources=resources, ctx=ctx, now=self._clock.now(),
                               sessions=self._sessions, fresh=fresh_first or attempt > 0,
                               **transport)
            try:
                try:
                    response = self._dispatch(req)
                except OAuthError:
                    if req.cached and not req.fresh:
                        continue  # the refusal may rest on a stale cached view: ask the database
                    raise
                self._commit(req)
                return response
            except StaleClient as stale:
                if self.clients is not None:
                    self.clients.evict(stale.client_id)
            except OAuthError as err:
                failure = err
                break
            finally:
                req.close()
        else:
            failure = OAuthError("temporarily_unavailable",
                                 "the client changed during the request; try again", status=503)
        self.refuse(failure, form, ctx)
        raise failure

    def _commit(self, req: TokenRequest) -> None:
        if req.opened is None:
            self._audit.commit_unit(req.unit)
            return
        self.flush(req)
        req.opened.commit()

    def flush(self, req: TokenRequest) -> None:
        """Apply what waits in the request's unit to its open session (the caller commits)."""
        session = req.session
        pending = WriteUnit(intents=req.unit.intents)
        (result,) = self._audit.apply_units(session, [pending])
        if isinstance(result, Exception):
            raise result
        for evt in req.unit.events:
            self._audit.record_built(session, evt)
        req.unit = WriteUnit()

    def refuse(self, failure: OAuthError, form: dict[str, str], ctx: RequestContext) -> None:
        """Audit a refusal in its own transaction; run its follow-up (e.g. a family
        revocation)."""
        assert self._sessions is not None
        with self._sessions() as session:
            on_refused = getattr(failure, "on_refused", None)
            if on_refused is not None:
                on_refused(session, ctx)
            self.record_refusal(session, failure, form, ctx)
            session.commit()

    def token(self, session: Session, form: dict[str, str], resources: list[str],
              ctx: RequestContext, **transport: Any) -> TokenResponse:
        """Serve a token request inside the caller's transaction (the caller commits)."""
        req = TokenRequest(form=form, resources=resources, ctx=ctx, now=self._clock.now(),
                           opened=session, **transport)
        response = self._dispatch(req)
        self.flush(req)
        return response

    def _dispatch(self, req: TokenRequest) -> TokenResponse:
        grant_type = req.form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        handler = self.grants.get(grant_type)
        if handler is None:
            # Authenticate first so an unauthenticated caller learns nothing more.
            self.authenticate_client(req)
            raise OAuthError("unsupported_grant_type",
                             f"grant_type {grant_type!r} is not supported")
        return handler(req)

    def authenticate_client(self, req: TokenRequest) -> AuthenticatedClient:
        methods = presented_auth_methods(req)
        if len(methods) > 1:
            # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in
            # each request"; §5.2 names this case invalid_request.
            raise InvalidRequest("more than one client authentication method: "
                                 + ", ".join(methods))
        for authenticator in self.authenticators:
            result = authenticator(req)
            if result is not None:
                return result
        raise AssertionRejected("no client authentication")

    def _private_key_jwt(self, req: TokenRequest) -> AuthenticatedClient | None:
        if "client_assertion" not in req.form and "client_assertion_type" not in req.form:
            return None
        return self.verifier(req).authenticate(req.form, req.now)

    def _client_credentials(self, req: TokenRequest) -> TokenResponse:
        """RFC 6749 §4.4."""
        authn = self.authenticate_client(req)
        client = authn.client
        scope = self.grant_scope(req.form.get("scope"), client)
        audience = self.audience(req.resources, client)
        req.write(self._identities.touch_statements(client.handle, authn.key.handle))
        return self.issue(req, subject=client.client_id, client=client, scope=scope,
                          audience=audience, action="client_credentials",
                          data={"method": authn.method, "kid": authn.key.kid})

    def lifetime(self, client: Client, now: datetime, cap: int | None = None) -> int:
        """Per identity, else per kind, else default; never above the maximum, the client's
        expiry or `cap`."""
        ttl = client.token_ttl or self._settings.ttl_by_kind.get(client.kind) or \
            self._settings.default_ttl
        ttl = min(ttl, self._settings.max_ttl)
        if client.expires_at is not None:
            ttl = min(ttl, int((client.expires_at - now).total_seconds()))
        if cap is not None:
            ttl = min(ttl, cap)
        return max(ttl, 0)

    def issue(self, req: TokenRequest, *, subject: str, client: Client, scope: str | None,
              audience: str | list[str], action: str, data: dict[str, Any] | None = None,
              extra_claims: dict[str, Any] | None = None, ttl: int | None = None,
              token_type: str = "Bearer") -> TokenResponse:
        """Sign an access token and audit it in the request's transaction."""
        ttl = self.lifetime(client, req.now) if ttl is None else ttl
        if req.client_cert is not None:
            # RFC 8705 §3: a token requested over mutual TLS is bound to that certificate,
            # and outlives it in no case (a certificate renews tokens, never the reverse).
            from tessera.oauth.rfc8705_mtls import certificate_expiry, confirmation
            extra_claims = dict(extra_claims or {})
            extra_claims["cnf"] = {**extra_claims.get("cnf", {}), **confirmation(req.client_cert)}
            left = int((certificate_expiry(req.client_cert) - req.now).total_seconds())
            ttl = max(min(ttl, left), 0)
        issued = at.issue(self._keys.signer(io=req.io), issuer=self.issuer, subject=subject,
                          client_id=client.client_id, audience=audience, scope=scope,
                          now=req.now, ttl=ttl, extra=extra_claims)
        evt = self._audit.event(
            ev.TOKEN_ISSUED, actor=client.client_id, subject=subject, action=action,
            resource=audience if isinstance(audience, str) else " ".join(audience), ctx=req.ctx,
            data={"jti": issued.jti, "scope": scope or "", "exp": issued.claims["exp"],
                  **(data or {})})
        if req.opened is not None:
            self._audit.record_built(req.opened, evt)
        else:
            req.unit.events.append(evt)
        body: dict[str, Any] = {"access_token": issued.token, "token_type": token_type,
                                "expires_in": ttl}
        if scope:
            body["scope"] = scope
        return TokenResponse(body, issued.claims)

    def record_refusal(self, session: Session, err: OAuthError, form: dict[str, str],
                       ctx: RequestContext) -> None:
        """Audit a refused request in its own transaction (the failed one was rolled back)."""
        client_id = getattr(err, "client_id", None) or form.get("client_id")
        reason = getattr(err, "reason", None) or err.description or err.error
        self._audit.record(session, ev.TOKEN_REFUSED, outcome="failure", actor=client_id,
                           subject=client_id, action=form.get("grant_type"), ctx=ctx,
                           reasons=[reason], data={"error": err.error})

    @staticmethod
    def grant_scope(requested: str | None, client: Client) -> str | None:
        allowed = set(client.allowed_scopes)
        if requested is None:
            return " ".join(sorted(allowed)) or None
        wanted = requested.split(" ")
        if not requested or any(not _SCOPE_RE.match(s) for s in wanted):
            raise OAuthError("invalid_scope", "scope is malformed")
        outside = sorted(set(wanted) - allowed)
        if outside:
            raise OAuthError("invalid_scope", f"scope not allowed for this client: "
                             f"{' '.join(outside)}")
        return " ".join(dict.fromkeys(wanted))

    def audience(self, resources: list[str], client: Client) -> str | list[str]:
        if not resources:
            return self.issuer
        allowed = set(client.allowed_audiences) | {self.issuer}
        for r in resources:
            parts = urlsplit(r)
            # RFC 8707 §2: an absolute URI without a fragment.
            if not parts.scheme or parts.fragment:
                raise OAuthError("invalid_target", "resource must be an absolute URI")
            if r not in allowed:
                raise OAuthError("invalid_target", "resource not allowed for this client")
        unique = list(dict.fromkeys(resources))
        return unique[0] if len(unique) == 1 else unique

    def authenticate_bearer(self, token: str) -> dict[str, Any]:
        """The claims of one of our own bearer access tokens (audience = issuer), from its
        signature and claims alone. Routes never use this: they go through the one gate,
        `tessera.oauth.api_gate.ApiGate`, which also checks status, revocation and binding."""
        claims = at.validate(token, self._keys.keyset(), issuer=self.issuer,
                             audience=self.issuer, now=self._clock.now(),
                             leeway=self._settings.leeway)
        # RFC 9449 §7.1: a DPoP-bound token is not a bearer token.
        cnf = claims.get("cnf")
        if isinstance(cnf, dict) and "jkt" in cnf:
            raise at.InvalidToken("sender-constrained token presented as a bearer token")
        return claims

    def purge_expired(self, session: Session) -> int:
        return SqlReplayCache.purge(session, self._clock.now() - timedelta(seconds=5))


__all__ = ["AssertionRejected", "TokenService"]

"""The token endpoint's logic (RFC 6749 §4.4 client credentials) over the registry and keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.config import TokenSettings
from tessera.errors import InvalidRequest, OAuthError
from tessera.identity import IdentityService
from tessera.identity.schemas import SCOPE_TOKEN
from tessera.keys.service import KeyService
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.models import UsedJTIRow
from tessera.oauth.ports import Client, ClientKey
from tessera.oauth.rfc7523_client_assertion import (AssertionRejected, AuthenticatedClient,
                                                    ClientAssertionVerifier)

_SCOPE_RE = re.compile(SCOPE_TOKEN)


class SqlClients:
    """ClientStore over the identity registry, bound to one session."""

    def __init__(self, session: Session, identities: IdentityService) -> None:
        self._session = session
        self._identities = identities

    def find_client(self, client_id: str) -> Client | None:
        view = self._identities.client_view(self._session, client_id)
        if view is None:
            return None
        return Client(client_id=view.id, usable=view.usable,
                      allowed_scopes=view.allowed_scopes,
                      allowed_audiences=view.allowed_audiences, expires_at=view.expires_at,
                      handle=view, kind=view.kind, token_ttl=view.token_ttl,
                      dpop_required=view.dpop_required, may_act_for=view.may_act_for,
                      spiffe_id=view.spiffe_id)

    def client_keys(self, client: Client, kid: str | None) -> list[ClientKey]:
        return [ClientKey(kid=k.kid, jwk=k.jwk, handle=k) for k in client.handle.keys
                if kid is None or k.kid == kid]


class SqlReplayCache:
    """ReplayCache on a table with a primary key: one insert wins across every node."""

    def __init__(self, session: Session) -> None:
        self._session = session

    # Built once per dialect: statement construction costs as much as the insert itself.
    _statements: dict[str, Any] = {}

    @classmethod
    def _statement(cls, dialect: str) -> Any:
        stmt = cls._statements.get(dialect)
        if stmt is None:
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING.
            stmt = insert(UsedJTIRow).values(
                issuer=bindparam("issuer"), jti=bindparam("jti"),
                expires_at=bindparam("expires_at", type_=UsedJTIRow.__table__.c.expires_at.type)
            ).on_conflict_do_nothing().returning(UsedJTIRow.jti)
            cls._statements[dialect] = stmt
        return stmt

    def use_once(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        stmt = self._statement(self._session.get_bind().dialect.name)
        params = {"issuer": issuer, "jti": jti, "expires_at": expires_at}
        return self._session.execute(stmt, params).first() is not None

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
    """One token request as the grant handlers see it (transport details included)."""

    session: Session
    form: dict[str, str]
    resources: list[str]
    ctx: RequestContext
    now: datetime
    method: str = "POST"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    client_cert: bytes | None = None  # DER of a verified TLS client certificate, if any


GrantHandler = Callable[[TokenRequest], TokenResponse]
ClientAuthenticator = Callable[[TokenRequest], "AuthenticatedClient | None"]
# Checks run on every Tessera token the management API accepts (revocation, status...).
TokenCheck = Callable[[Session, dict[str, Any]], None]


class TokenService:
    """Authenticates clients and issues RFC 9068 access tokens.

    Grant types and client-authentication methods are pluggable: `grants` maps a grant_type to
    its handler, `authenticators` are tried in order (each returns None when the request does
    not use its method). The built-ins are client_credentials and private_key_jwt.
    """

    def __init__(self, *, issuer: str, clock: Clock, keys: KeyService,
                 identities: IdentityService, audit: AuditService,
                 settings: TokenSettings) -> None:
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
        self.token_checks: list[TokenCheck] = []

    def verifier(self, session: Session) -> ClientAssertionVerifier:
        return ClientAssertionVerifier(
            SqlClients(session, self._identities), SqlReplayCache(session),
            audiences={self.issuer, self.token_endpoint},
            max_age=self._settings.assertion_max_age, leeway=self._settings.leeway)

    def token(self, session: Session, form: dict[str, str], resources: list[str],
              ctx: RequestContext, **transport: Any) -> TokenResponse:
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        req = TokenRequest(session=session, form=form, resources=resources, ctx=ctx,
                           now=self._clock.now(), **transport)
        handler = self.grants.get(grant_type)
        if handler is None:
            # Authenticate first so an unauthenticated caller learns nothing more.
            self.authenticate_client(req)
            raise OAuthError("unsupported_grant_type",
                             f"grant_type {grant_type!r} is not supported")
        return handler(req)

    def authenticate_client(self, req: TokenRequest) -> AuthenticatedClient:
        for authenticator in self.authenticators:
            result = authenticator(req)
            if result is not None:
                return result
        raise AssertionRejected("no client authentication")

    def _private_key_jwt(self, req: TokenRequest) -> AuthenticatedClient | None:
        if "client_assertion" not in req.form and "client_assertion_type" not in req.form:
            return None
        return self.verifier(req.session).authenticate(req.form, req.now)

    def _client_credentials(self, req: TokenRequest) -> TokenResponse:
        """RFC 6749 §4.4."""
        authn = self.authenticate_client(req)
        client = authn.client
        scope = self.grant_scope(req.form.get("scope"), client)
        audience = self.audience(req.resources, client)
        self._identities.touch(req.session, client.handle, authn.key.handle)
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
            # RFC 8705 §3: a token requested over mutual TLS is bound to that certificate.
            from tessera.oauth.rfc8705_mtls import confirmation
            extra_claims = dict(extra_claims or {})
            extra_claims["cnf"] = {**extra_claims.get("cnf", {}), **confirmation(req.client_cert)}
        issued = at.issue(self._keys.signer(), issuer=self.issuer, subject=subject,
                          client_id=client.client_id, audience=audience, scope=scope,
                          now=req.now, ttl=ttl, extra=extra_claims)
        self._audit.record(req.session, ev.TOKEN_ISSUED, actor=client.client_id,
                           subject=subject, action=action,
                           resource=audience if isinstance(audience, str) else " ".join(audience),
                           ctx=req.ctx, data={"jti": issued.jti, "scope": scope or "",
                                              "exp": issued.claims["exp"], **(data or {})})
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

    def authenticate_bearer(self, token: str, session: Session | None = None) -> dict[str, Any]:
        """Validate one of our own access tokens for Tessera's API (audience = issuer).

        With a session, `token_checks` also run (revoked jti, suspended subject or client).
        """
        claims = at.validate(token, self._keys.keyset(), issuer=self.issuer,
                             audience=self.issuer, now=self._clock.now(),
                             leeway=self._settings.leeway)
        # RFC 9449 §7.1: a DPoP-bound token is not a bearer token. (A certificate-bound one,
        # RFC 8705 §3, is presented as Bearer; the caller checks its x5t#S256 binding.)
        cnf = claims.get("cnf")
        if isinstance(cnf, dict) and "jkt" in cnf:
            raise at.InvalidToken("sender-constrained token presented as a bearer token")
        if session is not None:
            for check in self.token_checks:
                check(session, claims)
        return claims

    def purge_expired(self, session: Session) -> int:
        return SqlReplayCache.purge(session, self._clock.now() - timedelta(seconds=5))


__all__ = ["AssertionRejected", "TokenService"]

"""Workload identity federation: trusted issuers, and turning their tokens into identities.

A workload presents a token its platform signed (a Kubernetes service-account token, a CI job's
OIDC token). It is accepted when its issuer is registered, its signature verifies with that
issuer's JWKS, `aud` is one the issuer entry accepts, `exp`/`nbf`/`iat` are in bounds, and a
mapping rule turns its claims into an active identity. No Tessera-side secret exists for it.

No network request is made while a database transaction is open: an issuer's keys are fetched
after reading its entry in a short read-only session of their own, before the caller's session
begins its transaction (`prefetch`, or `authenticate_token` on a session with none open). An
issuer that never answers then holds no lock another client's request waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.config import FederationSettings
from tessera.errors import Conflict, NotFound, ValidationFailed
from tessera.federation.jwks import FetchError, JWKSFetcher, check_url
from tessera.federation.mapping import UnusableClaim, map_claims
from tessera.federation.models import FederatedIssuerRow
from tessera.federation.schemas import IssuerCreate, IssuerRead, IssuerUpdate
from tessera.identity import IdentityService
from tessera.ids import new_id
from tessera.jwt_peek import MalformedJWT, peek
from tessera.text import identifier

ISSUER_MAX = 500  # federated_issuers.issuer

# Asymmetric JWS algorithms only: never `none`, never HMAC (RFC 8725 §3.1, §3.2).
TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
MAX_TOKEN_BYTES = 16 * 1024
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class FederationRejected(Exception):
    """A federated token is refused. Clients see a uniform message; `reason` is for audit."""

    def __init__(self, reason: str, issuer: str | None = None) -> None:
        super().__init__("the federated token is not accepted")
        self.reason = reason
        self.issuer = issuer


@dataclass(frozen=True)
class FederatedIdentity:
    """The outcome of accepting a federated token."""

    identity_id: str
    issuer_id: str
    issuer: str
    subject: str | None
    expires_at: int
    claims: dict[str, Any]


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FederationRejected(f"{name} is not a number")
    return float(value)


def _validate_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys or len(keys) > 50:
        raise ValidationFailed("jwks must have a keys array of 1 to 50 public keys")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") == "oct" or PRIVATE_MEMBERS & key.keys():
            raise ValidationFailed("jwks must hold public asymmetric keys only")
    try:
        KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValidationFailed("jwks could not be parsed") from exc
    return {"keys": keys}


class FederationService:
    """Registry of trusted issuers and verification of the tokens they sign."""

    def __init__(self, clock: Clock, identities: IdentityService, audit: AuditService,
                 settings: FederationSettings, fetcher: JWKSFetcher | None = None,
                 leeway: int = 30, *, readonly: Callable[[], Session]) -> None:
        self._clock = clock
        self._identities = identities
        self._audit = audit
        self.settings = settings
        self.fetcher = fetcher or JWKSFetcher(settings, now=lambda: clock.now().timestamp())
        self._leeway = leeway
        # Read-only sessions (no write lock on SQLite) for the issuer lookup before a fetch.
        self._readonly = readonly

    # -- registry --------------------------------------------------------------------------

    @staticmethod
    def read(row: FederatedIssuerRow) -> IssuerRead:
        return IssuerRead(id=row.id, name=row.name, issuer=row.issuer, jwks_uri=row.jwks_uri,
                          jwks=row.static_jwks, audiences=row.audiences, rules=row.rules,
                          enabled=row.enabled, created_by=row.created_by,
                          created_at=row.created_at, updated_at=row.updated_at)

    def _check_url(self, url: str, what: str) -> None:
        try:
            check_url(url, self.settings.allow_insecure_http)
        except FetchError as exc:
            raise ValidationFailed(f"{what}: {exc}") from exc
        if urlsplit(url).query:
            raise ValidationFailed(f"{what}: must not have a query")

    def add(self, session: Session, data: IssuerCreate, *, actor: str,
            ctx: RequestContext | None = None) -> FederatedIssuerRow:
        self._check_url(data.issuer, "issuer")
        if data.jwks_uri:
            self._check_url(data.jwks_uri, "jwks_uri")
        jwks = _validate_jwks(data.jwks) if data.jwks is not None else None
        if jwks and data.jwks_uri:
            raise ValidationFailed("give either jwks or jwks_uri, not both")
        exists = session.scalars(select(FederatedIssuerRow.id).where(
            (FederatedIssuerRow.issuer == data.issuer) | (FederatedIssuerRow.name == data.name)
        )).first()
        if exists:
            raise Conflict("an issuer with that name or URL is already registered")
        now = self._clock.now()
        row = FederatedIssuerRow(id=new_id("fed", now), name=data.name, issuer=data.issuer,
                                 jwks_uri=data.jwks_uri, static_jwks=jwks,
                                 audiences=data.audiences,
                                 rules=[r.model_dump() for r in data.rules], enabled=True,
                                 created_by=actor, created_at=now, updated_at=now)
        session.add(row)
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict("an issuer with that name or URL is already registered") from exc
        self._audit.record(session, ev.FEDERATION_ISSUER_ADDED, actor=actor, ctx=ctx,
                           resource=f"issuer:{row.id}",
                           data={"issuer": row.issuer, "audiences": row.audiences,
                                 "rules": row.rules})
        return row

    def get(self, session: Session, ref: str) -> FederatedIssuerRow:
        row = session.get(FederatedIssuerRow, ref) or session.scalars(
            select(FederatedIssuerRow).where(FederatedIssuerRow.name == ref)).first()
        if row is None:
            raise NotFound(f"issuer {ref!r} not found")
        return row

    def list(self, session: Session) -> list[FederatedIssuerRow]:
        return list(session.scalars(select(FederatedIssuerRow).order_by(FederatedIssuerRow.id)))

    def update(self, session: Session, ref: str, patch: IssuerUpdate, *, actor: str,
               ctx: RequestContext | None = None) -> FederatedIssuerRow:
        row = self.get(session, ref)
        fields = patch.model_dump(exclude_unset=True)
        if patch.jwks_uri:
            self._check_url(patch.jwks_uri, "jwks_uri")
            row.jwks_uri, row.static_jwks = patch.jwks_uri, None
        if patch.jwks is not None:
            row.static_jwks, row.jwks_uri = _validate_jwks(patch.jwks), None
        if patch.audiences is not None:
            row.audiences = patch.audiences
        if patch.rules is not None:
            row.rules = [r.model_dump() for r in patch.rules]
        if patch.enabled is not None:
            row.enabled = patch.enabled
        row.updated_at = self._clock.now()
        self.fetcher.forget(row.issuer)
        self._audit.record(session, ev.FEDERATION_ISSUER_UPDATED, actor=actor, ctx=ctx,
                           resource=f"issuer:{row.id}", data={"fields": sorted(fields)})
        return row

    def remove(self, session: Session, ref: str, *, actor: str,
               ctx: RequestContext | None = None) -> None:
        row = self.get(session, ref)
        self.fetcher.forget(row.issuer)
        self._audit.record(session, ev.FEDERATION_ISSUER_REMOVED, actor=actor, ctx=ctx,
                           resource=f"issuer:{row.id}", data={"issuer": row.issuer})
        session.delete(row)

    # -- token verification ----------------------------------------------------------------

    def prefetch(self, token: str) -> None:
        """Bring the keys of the token's issuer into the cache, if it is a registered one that
        publishes them; never raises (a failed fetch is refused, with its reason, by
        `authenticate_token`). Network I/O: call it with no database transaction open."""
        try:
            header, unverified = peek(token, TOKEN_ALGS)
        except MalformedJWT:
            return
        iss, kid = unverified.get("iss"), header.get("kid")
        # An issuer or key id no registration could hold is not looked up (nor fetched).
        if not identifier(iss, ISSUER_MAX) or (kid is not None and not identifier(kid)):
            return
        with self._readonly() as session:
            source = session.execute(select(
                FederatedIssuerRow.jwks_uri, FederatedIssuerRow.static_jwks).where(
                FederatedIssuerRow.issuer == iss, FederatedIssuerRow.enabled.is_(True))).first()
        # INVARIANT: the read-only session is closed here; the fetch below runs outside any
        # transaction.
        if source is None or source.static_jwks:
            return
        try:
            self.fetcher.jwks(iss, source.jwks_uri, kid)
        except FetchError:
            pass  # remembered by the fetcher; authenticate_token refuses with its reason

    def authenticate_token(self, session: Session, token: str, *,
                           fetch: bool = True) -> FederatedIdentity:
        """Verify a federated token and map it to an active identity; raises FederationRejected.

        Also the entry point for RFC 8693 `subject_token`s issued by a trusted issuer. The
        issuer's keys are fetched first (`prefetch`) only when `fetch` is true and `session`
        holds no transaction; otherwise only keys already cached are used.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise FederationRejected("token missing or too large")
        if fetch and not session.in_transaction():
            self.prefetch(token)
        try:
            header, unverified = peek(token, TOKEN_ALGS)
        except MalformedJWT as exc:
            raise FederationRejected(str(exc)) from exc
        alg = header["alg"]
        iss = unverified.get("iss")
        row = session.scalars(select(FederatedIssuerRow).where(
            FederatedIssuerRow.issuer == iss, FederatedIssuerRow.enabled.is_(True))).first() \
            if identifier(iss, ISSUER_MAX) else None
        if row is None:
            raise FederationRejected("issuer is not registered")
        kid = header.get("kid")
        if kid is not None and not identifier(kid):
            raise FederationRejected("kid is not a possible key id", row.issuer)
        claims = self._verify_signature(row, token, alg, kid)
        self._check_claims(row, claims)
        try:
            ref = map_claims(row.rules, claims)
        except UnusableClaim as exc:
            raise FederationRejected(str(exc), row.issuer) from exc
        if ref is None:
            raise FederationRejected("no mapping rule matches the token's claims", row.issuer)
        kind, _, name = ref.rpartition("/")
        try:
            identity = self._identities.get(session, name)
        except NotFound as exc:
            raise FederationRejected(f"mapped identity {ref!r} does not exist",
                                     row.issuer) from exc
        if identity.name != name or (kind and identity.kind != kind):
            raise FederationRejected(f"mapped identity {ref!r} does not exist", row.issuer)
        if not self._identities.is_usable(identity):
            raise FederationRejected(f"mapped identity {ref!r} is not active", row.issuer)
        sub = claims.get("sub")
        return FederatedIdentity(identity_id=identity.id, issuer_id=row.id, issuer=row.issuer,
                                 subject=sub if isinstance(sub, str) else None,
                                 expires_at=int(claims["exp"]), claims=claims)

    def _verify_signature(self, row: FederatedIssuerRow, token: str, alg: str,
                          kid: str | None) -> dict[str, Any]:
        if row.static_jwks:
            jwks = row.static_jwks
        else:
            try:
                # INVARIANT: memory only; a transaction may be open in the caller's session.
                jwks = self.fetcher.cached(row.issuer)
            except FetchError as exc:
                raise FederationRejected(f"issuer keys unavailable: {exc}", row.issuer) from exc
        candidates = [k for k in jwks.get("keys", []) if isinstance(k, dict)
                      and (kid is None or k.get("kid") == kid)
                      and k.get("alg", alg) == alg and k.get("use", "sig") == "sig"
                      and k.get("kty") != "oct" and not PRIVATE_MEMBERS & k.keys()]
        if not candidates:
            raise FederationRejected("no key of the issuer matches the token's kid", row.issuer)
        for key in candidates:
            try:
                keyset = KeySet.import_key_set({"keys": [key]})
                return dict(jwt.decode(token, keyset, algorithms=[alg]).claims)
            except (JoseError, ValueError, TypeError, KeyError):
                continue
        raise FederationRejected("signature does not verify with the issuer's keys",
                                 row.issuer)

    def _check_claims(self, row: FederatedIssuerRow, claims: dict[str, Any]) -> None:
        ts = self._clock.now().timestamp()
        if claims.get("iss") != row.issuer:
            raise FederationRejected("iss mismatch", row.issuer)
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in row.audiences for a in auds):
            raise FederationRejected("aud is not accepted for this issuer", row.issuer)
        exp, nbf, iat = (_number(claims, n) for n in ("exp", "nbf", "iat"))
        if exp is None or iat is None:
            raise FederationRejected("exp and iat are required", row.issuer)
        if exp <= ts - self._leeway:
            raise FederationRejected("token expired", row.issuer)
        if nbf is not None and nbf > ts + self._leeway:
            raise FederationRejected("token not yet valid", row.issuer)
        if iat > ts + self._leeway:
            raise FederationRejected("iat is in the future", row.issuer)
        if ts - iat > self.settings.max_token_age:
            raise FederationRejected("token is older than the maximum age", row.issuer)

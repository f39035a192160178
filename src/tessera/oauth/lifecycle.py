"""Token lifecycle over the registry: DPoP-bound issuance, refresh rotation, token exchange for
delegation, introspection and revocation.

`TokenLifecycle.install()` plugs the grants into `TokenService` (one line in the container).
The protocol rules live in the `rfc*` modules; this module holds the storage and the policy:

- Refresh tokens are issued for token-exchange grants, and for client_credentials when the
  granted scope includes `offline_access` (so the identity must be allowed that scope).
- Delegation: an identity may act for the identities listed in its `may_act_for`; `*` means any
  human identity. Checked on exchange and again on every refresh of a delegated family.
- A family's access tokens are recorded (`family_access_tokens`); revoking the family copies
  their `jti`s into `revoked_tokens`, so they introspect inactive until they expire.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock, utc
from tessera.config import TokenSettings
from tessera.errors import InvalidGrant, InvalidRequest, OAuthError, WouldBlock
from tessera.identity import IdentityService
from tessera.keys.service import KeyService
from tessera.oauth import rfc6749_refresh as rt
from tessera.oauth import rfc7009_revocation as rev
from tessera.oauth import rfc7662_introspection as intro
from tessera.oauth import rfc8693_token_exchange as tx
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.models import (
    FamilyAccessTokenRow,
    RefreshTokenRow,
    RevokedTokenRow,
    TokenFamilyRow,
)
from tessera.oauth.nonces import load_nonce_secret
from tessera.oauth.ports import Client, ReplayCache
from tessera.oauth.rfc9449_dpop import DPoPProof, DPoPVerifier, HMACNonces, InvalidDPoPProof
from tessera.oauth.service import (
    SqlClients,
    TokenRequest,
    TokenResponse,
    TokenService,
)
from tessera.oauth.status import check_active
from tessera.sealing import SecretBox

OFFLINE_ACCESS = "offline_access"


@dataclass
class SubjectToken:
    """A validated subject (or actor) token, whoever issued it."""

    subject: str
    exp: int
    scope: str | None = None
    act: dict[str, Any] | None = None
    client_id: str | None = None
    jkt: str | None = None
    audiences: list[str] = field(default_factory=list)
    issuer: str = ""


class SubjectTokenResolver(Protocol):
    """Turns a subject_token into a `SubjectToken`.

    Returns None when the token is not one it understands (the next resolver is tried);
    raises `InvalidRequest` when it is one of its own and is invalid. The federation package
    registers one for external issuers' tokens (`TokenLifecycle.subject_resolvers`).
    """

    def __call__(self, session: Session, token: str, token_type: str,
                 now: datetime) -> SubjectToken | None: ...


class RefreshTokenReused(InvalidGrant):
    """A rotated refresh token came back: theft. The family dies after the rollback."""

    def __init__(self, lifecycle: TokenLifecycle, family_id: str, client_id: str) -> None:
        super().__init__("the refresh token is invalid")
        self.reason = "refresh token reuse: family revoked"
        self.client_id = client_id
        self._lifecycle = lifecycle
        self._family_id = family_id

    def on_refused(self, session: Session, ctx: RequestContext) -> None:
        """Runs in the refusal's own transaction (the request's one was rolled back)."""
        self._lifecycle.revoke_family(session, self._family_id, reason="reuse", ctx=ctx,
                                      security=True)


def _unverified_claims(token: str) -> dict[str, Any] | None:
    try:
        claims = json.loads(extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError, TypeError, UnicodeEncodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _aud_list(aud: Any) -> list[str]:
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


class TokenLifecycle:
    """Refresh, exchange, DPoP, introspection and revocation on top of `TokenService`."""

    def __init__(self, tokens: TokenService, *, identities: IdentityService,
                 audit: AuditService, clock: Clock, keys: KeyService,
                 settings: TokenSettings, box: SecretBox,
                 sessions: sessionmaker[Session] | None = None) -> None:
        self.tokens = tokens
        self._identities = identities
        self._audit = audit
        self._clock = clock
        self._keys = keys
        self.settings = settings
        self._nonce_secret: bytes | None = None
        self._box = box
        self._sessions = sessions
        self.subject_resolvers: list[SubjectTokenResolver] = [self._tessera_token]
        # Run on a subject_token before anything opens the request's transaction: a resolver
        # that needs the network (an external issuer's keys) does that here, never while a
        # transaction holds database locks.
        self.subject_prefetchers: list[Callable[[str], None]] = []
        self.delegation_checks: list[Callable[[Session, Client, str], None]] = []

    def install(self) -> TokenLifecycle:
        self.tokens.grants["client_credentials"] = self._client_credentials
        self.tokens.grants[rt.GRANT_TYPE] = self._refresh
        self.tokens.grants[tx.GRANT_TYPE] = self._exchange
        return self

    @property
    def grant_types(self) -> list[str]:
        return sorted(self.tokens.grants)

    def now(self) -> datetime:
        return self._clock.now()

    def keyset(self) -> Any:
        """The public keys Tessera's own tokens verify against."""
        return self._keys.keyset()

    # -- DPoP ------------------------------------------------------------------------------

    def _nonces(self, get_session: Callable[[], Session]) -> HMACNonces | None:
        if not self.settings.dpop_nonce:
            return None
        if self._nonce_secret is None:  # once per process
            get_session()  # on the event loop: WouldBlock, the request moves to a thread
            if self._sessions is None:
                raise RuntimeError("DPoP nonces need a session factory")
            self._nonce_secret = load_nonce_secret(self._sessions, self._box)
        return HMACNonces(self._nonce_secret, self.settings.dpop_nonce_ttl)

    def dpop_verifier(self, replay: ReplayCache, get_session: Callable[[], Session]
                      ) -> DPoPVerifier:
        return DPoPVerifier(replay, algs=self.settings.dpop_algs,
                            max_age=self.settings.dpop_max_age, leeway=self.settings.leeway,
                            nonces=self._nonces(get_session))

    def _proof(self, req: TokenRequest, client: Client) -> DPoPProof | None:
        proof = req.headers.get("dpop")
        if proof is None:
            if client.dpop_required:
                raise InvalidDPoPProof("this client must use DPoP")
            return None
        replay = req.replay_cache(lambda _issuer: InvalidDPoPProof("proof jti replayed"))
        return self.dpop_verifier(replay, lambda: req.session).verify(
            proof, method=req.method, urls=[req.url or self.tokens.token_endpoint,
                                            self.tokens.token_endpoint], now=req.now)

    def _nonce_header(self, req: TokenRequest, proof: DPoPProof | None) -> dict[str, str]:
        nonces = self._nonces(lambda: req.session) if proof is not None else None
        return {"DPoP-Nonce": nonces.current(req.now)} if nonces else {}

    # -- issuing ---------------------------------------------------------------------------

    def _issue(self, req: TokenRequest, *, client: Client, subject: str, scope: str | None,
               audience: str | list[str], ttl: int, action: str, proof: DPoPProof | None,
               act: dict[str, Any] | None = None, family: TokenFamilyRow | None = None,
               data: dict[str, Any] | None = None) -> TokenResponse:
        extra: dict[str, Any] = {}
        if act:
            extra["act"] = act
        if proof is not None:
            # RFC 9449 §6.1: the token is bound to the proof key's thumbprint.
            extra["cnf"] = {"jkt": proof.jkt}
        audit_data = dict(data or {})
        if family is not None:
            audit_data["family"] = family.id
        if proof is not None:
            audit_data["jkt"] = proof.jkt
        resp = self.tokens.issue(req, subject=subject, client=client, scope=scope,
                                 audience=audience, action=action, data=audit_data,
                                 extra_claims=extra or None, ttl=ttl,
                                 token_type="DPoP" if proof is not None else "Bearer")
        if family is not None:
            req.session.add(FamilyAccessTokenRow(
                jti=resp.claims["jti"], family_id=family.id,
                expires_at=req.now + timedelta(seconds=ttl + self.settings.leeway)))
            resp.body["refresh_token"] = self._new_refresh_token(req.session, family, req.now)
        if act:
            # RFC 8693 §2.2.1: issued_token_type is REQUIRED in an exchange response.
            resp.body.setdefault("issued_token_type", tx.ACCESS_TOKEN_TYPE)
        resp.headers.update(self._nonce_header(req, proof))
        return resp

    def _new_family(self, req: TokenRequest, *, client: Client, subject: str, grant_type: str,
                    scope: str | None, audience: str | list[str], act: dict[str, Any] | None,
                    proof: DPoPProof | None) -> TokenFamilyRow:
        family = TokenFamilyRow(
            id=f"fam_{secrets.token_hex(12)}", client_id=client.client_id, subject=subject,
            grant_type=grant_type, scope=scope, audience=_aud_list(audience), act=act,
            jkt=proof.jkt if proof else None, created_at=req.now,
            expires_at=req.now + timedelta(seconds=self.settings.refresh_family_ttl))
        req.session.add(family)
        req.session.flush()
        return family

    def _new_refresh_token(self, session: Session, family: TokenFamilyRow,
                           now: datetime) -> str:
        value = rt.new_token()
        idle = now + timedelta(seconds=self.settings.refresh_idle_ttl)
        session.add(RefreshTokenRow(token_hash=rt.token_hash(value), family_id=family.id,
                                    status="active", created_at=now,
                                    expires_at=min(idle, utc(family.expires_at))))
        return value

    # -- client credentials (RFC 6749 §4.4) with DPoP and optional refresh -------------------

    def _client_credentials(self, req: TokenRequest) -> TokenResponse:
        authn = self.tokens.authenticate_client(req)
        client = authn.client
        proof = self._proof(req, client)
        scope = self.tokens.grant_scope(req.form.get("scope"), client)
        audience = self.tokens.audience(req.resources, client)
        req.write(self._identities.touch_statements(client.handle, authn.key.handle))
        family = None
        if scope and OFFLINE_ACCESS in scope.split(" "):
            family = self._new_family(req, client=client, subject=client.client_id,
                                      grant_type="client_credentials", scope=scope,
                                      audience=audience, act=None, proof=proof)
        return self._issue(req, client=client, subject=client.client_id, scope=scope,
                           audience=audience, ttl=self.tokens.lifetime(client, req.now),
                           action="client_credentials", proof=proof, family=family,
                           data={"method": authn.method, "kid": authn.key.kid})

    # -- refresh (RFC 6749 §6) -------------------------------------------------------------

    def _refresh(self, req: TokenRequest) -> TokenResponse:
        authn = self.tokens.authenticate_client(req)
        client = authn.client
        value = rt.parse(req.form)
        digest = rt.token_hash(value)
        row = req.session.get(RefreshTokenRow, digest)
        if row is None:
            raise InvalidGrant("the refresh token is invalid")
        family = req.session.get_one(TokenFamilyRow, row.family_id)
        # §6: the refresh token is bound to the client it was issued to.
        if family.client_id != client.client_id:
            err = InvalidGrant("the refresh token is invalid")
            err.reason = "refresh token presented by another client"  # type: ignore[attr-defined]
            raise err
        if family.revoked_at is not None:
            raise InvalidGrant("the refresh token is invalid")
        if row.status != "active":
            raise RefreshTokenReused(self, family.id, client.client_id)
        if utc(row.expires_at) <= req.now or utc(family.expires_at) <= req.now:
            raise InvalidGrant("the refresh token has expired")
        proof = self._proof(req, client)
        if family.jkt is not None:
            # RFC 9449 §5: a DPoP client's refresh token is bound to its key.
            if proof is None:
                raise InvalidDPoPProof("refresh token is bound to a DPoP key")
            if proof.jkt != family.jkt:
                raise InvalidGrant("the refresh token is bound to another key")
        # Rotation: exactly one request can move this token from active to used.
        moved = req.session.execute(
            update(RefreshTokenRow).where(RefreshTokenRow.token_hash == digest,
                                          RefreshTokenRow.status == "active")
            .values(status="used", used_at=req.now))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise RefreshTokenReused(self, family.id, client.client_id)
        self._check_family_parties(req.session, family)
        scope = family.scope
        requested = req.form.get("scope")
        if requested is not None:
            # §6: the new scope MUST NOT include any scope not originally granted.
            wanted = requested.split(" ")
            if not requested or not set(wanted) <= set((family.scope or "").split()):
                raise OAuthError("invalid_scope", "scope exceeds the original grant")
            scope = " ".join(dict.fromkeys(wanted))
        remaining = int((utc(family.expires_at) - req.now).total_seconds())
        ttl = self.tokens.lifetime(client, req.now, cap=remaining)
        audience: str | list[str] = family.audience[0] if len(family.audience) == 1 \
            else list(family.audience)
        return self._issue(req, client=client, subject=family.subject, scope=scope,
                           audience=audience, ttl=ttl, action="refresh_token", proof=proof,
                           act=family.act, family=family, data={"method": authn.method})

    def _check_family_parties(self, session: Session, family: TokenFamilyRow) -> None:
        """Every party of a refreshed family may still act: the client, the subject and every
        actor of its nested `act` chain are active and were not suspended since the family
        began (a resume does not revive it), and each actor may still act for the subject."""
        actors: list[str] = []
        act = family.act
        while isinstance(act, dict):
            actor_id = act.get("client_id")
            if not isinstance(actor_id, str):
                raise InvalidGrant("the refresh token is invalid")
            actors.append(actor_id)
            act = act.get("act")
        began = utc(family.created_at)
        for party in dict.fromkeys([family.client_id, *actors, family.subject]):
            row = self._identities.find(session, party)
            if row is None:
                if party == family.subject:
                    continue  # a subject Tessera does not register (checked at exchange)
                raise InvalidGrant("a party of the grant is no longer registered")
            if not self._identities.is_usable(row) or (
                    row.suspended_at is not None and utc(row.suspended_at) >= began):
                raise InvalidGrant("a party of the grant is no longer active")
        clients = SqlClients(session, self._identities)
        for actor_id in actors:
            actor = clients.find_client(actor_id)
            if actor is None or not actor.usable:
                raise InvalidGrant("a delegating identity is no longer active")
            self.check_delegation(session, actor, family.subject)

    # -- token exchange (RFC 8693) ---------------------------------------------------------

    def _exchange(self, req: TokenRequest) -> TokenResponse:
        subject_token = req.form.get("subject_token")
        if self.subject_prefetchers and subject_token:
            if not req.io:
                raise WouldBlock("a subject_token may need its issuer's keys fetched")
            for prefetch in self.subject_prefetchers:
                prefetch(subject_token)
        authn = self.tokens.authenticate_client(req)
        client = authn.client
        x = tx.parse(req.form, req.resources)
        subject = self.resolve_subject_token(req.session, x.subject_token,
                                             x.subject_token_type, req.now)
        actor = client
        if x.actor_token is not None:
            actor_token = self._tessera_token(req.session, x.actor_token,
                                              x.actor_token_type or "", req.now)
            if actor_token is None:
                raise InvalidRequest("actor_token is invalid")
            # The actor token must have been issued to (or be about) the calling client.
            if client.client_id not in (actor_token.client_id, actor_token.subject):
                raise InvalidRequest("actor_token was not issued to this client")
            found = SqlClients(req.session, self._identities).find_client(actor_token.subject)
            if found is None or not found.usable:
                raise InvalidRequest("actor_token is invalid")
            actor = found
        # The subject token must be meant for this server or for the actor.
        accepted = {self.tokens.issuer, actor.client_id, actor.spiffe_id}
        if subject.audiences and not accepted & set(subject.audiences):
            raise InvalidRequest("subject_token is not intended for this actor")
        proof = self._proof(req, client)
        if subject.jkt is not None and (proof is None or proof.jkt != subject.jkt):
            raise InvalidRequest("subject_token is sender-constrained to another key")
        if subject.subject == actor.client_id:
            raise InvalidRequest("an identity cannot act for itself")
        self.check_delegation(req.session, actor, subject.subject)
        act = tx.nest_act({"sub": actor.spiffe_id or actor.client_id,
                           "client_id": actor.client_id}, subject.act,
                          self.settings.max_delegation_depth)
        scope = tx.narrow_scope(x.scope, subject.scope, actor.allowed_scopes)
        audience = self._exchange_audience(x, actor)
        remaining = subject.exp - int(req.now.timestamp())
        if remaining <= 0:
            raise InvalidRequest("subject_token has expired")
        # The new token never outlives the subject token.
        ttl = self.tokens.lifetime(actor, req.now, cap=remaining)
        family = self._new_family(req, client=client, subject=subject.subject,
                                  grant_type=tx.GRANT_TYPE, scope=scope, audience=audience,
                                  act=act, proof=proof)
        return self._issue(req, client=client, subject=subject.subject, scope=scope,
                           audience=audience, ttl=ttl, action="token_exchange", proof=proof,
                           act=act, family=family,
                           data={"method": authn.method, "actor": actor.client_id,
                                 "subject_issuer": subject.issuer})

    def _exchange_audience(self, x: tx.ExchangeRequest, actor: Client) -> str | list[str]:
        allowed = set(actor.allowed_audiences) | {self.tokens.issuer}
        for name in x.audiences:
            if name not in allowed:
                raise OAuthError("invalid_target", "audience not allowed for this client")
        targets = list(dict.fromkeys(
            x.audiences + _aud_list(self.tokens.audience(x.resources, actor)
                                    if x.resources else [])))
        if not targets:
            return self.tokens.issuer
        return targets[0] if len(targets) == 1 else targets

    def resolve_subject_token(self, session: Session, token: str, token_type: str,
                              now: datetime) -> SubjectToken:
        for resolver in self.subject_resolvers:
            found = resolver(session, token, token_type, now)
            if found is not None:
                return found
        # RFC 8693 §2.2.2: an invalid subject_token is invalid_request.
        raise InvalidRequest("subject_token is invalid")

    def _tessera_token(self, session: Session, token: str, token_type: str,
                       now: datetime) -> SubjectToken | None:
        """Built-in resolver: Tessera's own access tokens."""
        unverified = _unverified_claims(token)
        if unverified is None or unverified.get("iss") != self.tokens.issuer:
            return None  # not ours: a federated resolver may know it
        try:
            claims = at.validate(token, self._keys.keyset(), issuer=self.tokens.issuer,
                                 audience=None, now=now, leeway=0)
            self.check_active(session, claims)
        except at.InvalidToken as exc:
            raise InvalidRequest("subject_token is invalid") from exc
        cnf = claims.get("cnf")
        return SubjectToken(subject=claims["sub"], exp=int(claims["exp"]),
                            scope=claims.get("scope"), act=claims.get("act"),
                            client_id=claims.get("client_id"),
                            jkt=cnf.get("jkt") if isinstance(cnf, dict) else None,
                            audiences=_aud_list(claims.get("aud")), issuer=self.tokens.issuer)

    def check_delegation(self, session: Session, actor: Client, subject: str) -> None:
        """The identity's delegation rules (`may_act_for`), then any registered policy."""
        if not actor.may_act_for:
            raise OAuthError("unauthorized_client", "this client may not act for others")
        allowed = subject in actor.may_act_for
        if not allowed and "*" in actor.may_act_for:
            row = self._identities.find(session, subject)
            allowed = row is not None and row.kind == "human"
        if not allowed:
            raise InvalidRequest("this client may not act for the subject")
        # Hook for the policy engine: raise OAuthError to refuse.
        for check in self.delegation_checks:
            check(session, actor, subject)

    def check_active(self, session: Session, claims: dict[str, Any]) -> None:
        """Raises InvalidToken when the token was revoked or a party behind it may not act
        (`tessera.oauth.status`): introspection, exchange and the API gate share it."""
        check_active(session, claims, self._identities)

    # -- introspection (RFC 7662) ----------------------------------------------------------

    def introspect(self, session: Session, form: dict[str, str], ctx: RequestContext,
                   **transport: Any) -> dict[str, Any]:
        req = TokenRequest(opened=session, form=form, resources=[], ctx=ctx,
                           now=self._clock.now(), **transport)
        # §2.1: the endpoint requires client authentication.
        caller = self.tokens.authenticate_client(req).client
        token, _hint = intro.parse(form)
        if rt.looks_like_refresh_token(token):
            return self._introspect_refresh(session, token, caller, req.now)
        try:
            claims = at.validate(token, self._keys.keyset(), issuer=self.tokens.issuer,
                                 audience=None, now=req.now, leeway=0)
            self.check_active(session, claims)
        except at.InvalidToken:
            return dict(intro.INACTIVE)
        return intro.access_token_response(claims)

    def _introspect_refresh(self, session: Session, token: str, caller: Client,
                            now: datetime) -> dict[str, Any]:
        row = session.get(RefreshTokenRow, rt.token_hash(token))
        if row is None:
            return dict(intro.INACTIVE)
        family = session.get_one(TokenFamilyRow, row.family_id)
        # Only the client a refresh token belongs to learns anything about it.
        if (family.client_id != caller.client_id or row.status != "active" or
                family.revoked_at is not None or utc(row.expires_at) <= now or
                utc(family.expires_at) <= now):
            return dict(intro.INACTIVE)
        body: dict[str, Any] = {"active": True, "token_type": "refresh_token",
                                "client_id": family.client_id, "sub": family.subject,
                                "exp": int(utc(row.expires_at).timestamp()),
                                "iat": int(utc(row.created_at).timestamp()),
                                "iss": self.tokens.issuer}
        if family.scope:
            body["scope"] = family.scope
        if family.act:
            body["act"] = family.act
        if family.jkt:
            body["cnf"] = {"jkt": family.jkt}
        return body

    # -- revocation (RFC 7009) -------------------------------------------------------------

    def revoke(self, session: Session, form: dict[str, str], ctx: RequestContext,
               **transport: Any) -> None:
        req = TokenRequest(opened=session, form=form, resources=[], ctx=ctx,
                           now=self._clock.now(), **transport)
        # §2.1: the endpoint requires client authentication.
        caller = self.tokens.authenticate_client(req).client
        token, _hint = rev.parse(form)
        if rt.looks_like_refresh_token(token):
            row = session.get(RefreshTokenRow, rt.token_hash(token))
            if row is None:
                return
            family = session.get_one(TokenFamilyRow, row.family_id)
            # §2.1: the token must have been issued to the client asking.
            if family.client_id != caller.client_id:
                raise InvalidGrant("the token was issued to another client")
            self.revoke_family(session, family.id, reason="revoked by client", ctx=ctx,
                               actor=caller.client_id)
            return
        try:
            claims = at.validate(token, self._keys.keyset(), issuer=self.tokens.issuer,
                                 audience=None, now=req.now, leeway=0)
        except at.InvalidToken:
            return  # §2.2: invalid tokens do not cause an error
        if caller.client_id not in (claims.get("client_id"), claims.get("sub")):
            raise InvalidGrant("the token was issued to another client")
        self.revoke_jti(session, claims["jti"], int(claims["exp"]))
        self._audit.record(session, ev.TOKEN_REVOKED, actor=caller.client_id,
                           subject=claims.get("sub"), ctx=ctx,
                           data={"jti": claims["jti"], "token_type": "access_token"})

    def revoke_jti(self, session: Session, jti: str, exp: int) -> None:
        if session.get(RevokedTokenRow, jti) is not None:
            return
        session.add(RevokedTokenRow(
            jti=jti, revoked_at=self._clock.now(),
            expires_at=datetime.fromtimestamp(exp + self.settings.leeway,
                                              self._clock.now().tzinfo)))
        session.flush()

    def revoke_identity(self, session: Session, identity_id: str, *, reason: str) -> int:
        """Revoke every live token family the identity holds, as subject or as client."""
        families = session.scalars(select(TokenFamilyRow.id).where(
            or_(TokenFamilyRow.subject == identity_id, TokenFamilyRow.client_id == identity_id),
            TokenFamilyRow.revoked_at.is_(None))).all()
        for family_id in families:
            self.revoke_family(session, family_id, reason=reason)
        return len(families)

    def revoke_family(self, session: Session, family_id: str, *, reason: str,
                      ctx: RequestContext | None = None, actor: str | None = None,
                      security: bool = False) -> None:
        """Kill a family: its refresh tokens and every unexpired access token issued in it."""
        family = session.get(TokenFamilyRow, family_id)
        if family is None:
            return
        now = self._clock.now()
        if family.revoked_at is None:
            family.revoked_at, family.revoked_reason = now, reason[:200]
        session.execute(update(RefreshTokenRow).where(RefreshTokenRow.family_id == family_id)
                        .values(status="revoked"))
        live = session.scalars(select(FamilyAccessTokenRow).where(
            FamilyAccessTokenRow.family_id == family_id,
            FamilyAccessTokenRow.expires_at > now)).all()
        for row in live:
            if session.get(RevokedTokenRow, row.jti) is None:
                session.add(RevokedTokenRow(jti=row.jti, expires_at=row.expires_at,
                                            revoked_at=now))
        session.flush()
        self._audit.record(
            session, ev.REFRESH_TOKEN_REUSED if security else ev.TOKEN_FAMILY_REVOKED,
            outcome="failure" if security else "success", actor=actor or family.client_id,
            subject=family.subject, ctx=ctx, reasons=[reason],
            data={"family": family.id, "access_tokens_revoked": len(live),
                  "security_event": security})

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, session: Session) -> int:
        """Delete revocations and families past their expiry (kept exactly that long)."""
        now = self._clock.now() - timedelta(seconds=5)
        count = 0
        for stmt in (delete(RevokedTokenRow).where(RevokedTokenRow.expires_at < now),
                     delete(FamilyAccessTokenRow).where(FamilyAccessTokenRow.expires_at < now)):
            count += int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
        dead = select(TokenFamilyRow.id).where(TokenFamilyRow.expires_at < now)
        session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.family_id.in_(dead)))
        session.execute(delete(FamilyAccessTokenRow).where(
            FamilyAccessTokenRow.family_id.in_(dead)))
        count += int(session.execute(delete(TokenFamilyRow).where(
            TokenFamilyRow.expires_at < now)).rowcount)  # type: ignore[attr-defined]
        return count

"""The one gate for Tessera's own API: every route that accepts a Tessera access token calls
`ApiGate.authenticate` (RFC 6750 bearer tokens, RFC 9449 §7 DPoP-bound tokens, RFC 8705 §3
certificate-bound tokens).

The full check, in one place so that no route can forget part of it:

- the token: signature by a current key, `typ: at+jwt`, issuer, audience = the issuer (a token
  for another resource is not a key to the management API), `exp`/`nbf` with the configured
  leeway;
- sender binding: a DPoP-bound token (`cnf.jkt`) only with the `DPoP` scheme and a proof for
  this request (`htm`, `htu`, `ath`, the bound key, the server nonce when nonces are on, a
  single-use `jti`); a `DPoP` scheme only for a DPoP-bound token; a certificate-bound token
  (`cnf.x5t#S256`) only over a connection presenting that certificate;
- status: the `jti` not revoked; the client, the subject and every actor of a nested `act`
  chain registered and active, none suspended or resumed since the token was issued, none with
  a credential revoked since (`tessera.oauth.status.check_active`);
- the subject is a registered, active identity (the API acts for it).

A refusal raises `ApiCredentialRejected`; its `reason` goes to logs and audit, never to the
client, who learns only that the credential was refused (and, for DPoP, a fresh nonce).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from tessera.ca.svid import x5t_s256
from tessera.errors import OAuthError
from tessera.identity import IdentityService
from tessera.oauth import rfc9068_access_token as at
from tessera.oauth.rfc9449_dpop import UseDPoPNonce
from tessera.oauth.service import SqlReplayCache

if TYPE_CHECKING:
    from tessera.oauth.lifecycle import TokenLifecycle


class ApiCredentialRejected(Exception):
    """The request's access token (or its proof or certificate) is refused."""

    def __init__(self, reason: str, *, dpop: bool = False, nonce: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dpop = dpop  # answer with a DPoP challenge (RFC 9449 §7.1)
        self.nonce = nonce  # a fresh server nonce the client must use (§8)


@dataclass(frozen=True)
class Presented:
    """What a request presents: its Authorization header, DPoP headers and TLS certificate."""

    authorization: str
    dpop: Sequence[str] = ()
    method: str = "GET"
    url: str = ""
    path: str | None = None
    client_cert: bytes | None = None  # DER of the verified TLS client certificate


def _scheme_and_token(authorization: str) -> tuple[str, str]:
    scheme, _, token = authorization.partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme not in ("bearer", "dpop") or not token or " " in token:
        raise ApiCredentialRejected("a bearer or DPoP access token is required")
    return scheme, token


def parties(claims: dict[str, Any]) -> list[str]:
    """The identities a token speaks for: client, subject and every actor of its `act` chain."""
    out = [claims.get("client_id"), claims.get("sub")]
    act = claims.get("act")
    while isinstance(act, dict):
        out.append(act.get("client_id"))
        act = act.get("act")
    return list(dict.fromkeys(p for p in out if isinstance(p, str)))


class ApiGate:
    """Authenticates requests to Tessera's API (see the module docstring)."""

    def __init__(self, lifecycle: TokenLifecycle, identities: IdentityService) -> None:
        self._lifecycle = lifecycle
        self._identities = identities

    def authenticate(self, session: Session, presented: Presented,
                     revisions: list[tuple[str, int]] | None = None) -> dict[str, Any]:
        """The claims of a token that passed every check, or `ApiCredentialRejected`.

        `revisions`, if given, receives the (identity id, rev) of every party, read *before*
        the status checks: a change committed while they run then moves a rev past the one
        recorded, so a cache validated by these revisions can never hide it."""
        scheme, token = _scheme_and_token(presented.authorization)
        lifecycle = self._lifecycle
        issuer = lifecycle.tokens.issuer
        now = lifecycle.now()
        try:
            claims = at.validate(token, lifecycle.keyset(), issuer=issuer, audience=issuer,
                                 now=now, leeway=lifecycle.settings.leeway)
        except at.InvalidToken as exc:
            raise ApiCredentialRejected(str(exc), dpop=scheme == "dpop") from exc
        cnf = claims.get("cnf")
        cnf = cnf if isinstance(cnf, dict) else {}
        jkt = cnf.get("jkt")
        if scheme == "dpop":
            if not isinstance(jkt, str):
                raise ApiCredentialRejected("DPoP scheme with a token not bound to a key",
                                            dpop=True)
            self._check_proof(session, presented, token, jkt)
        elif jkt is not None:
            # RFC 9449 §7.1: a DPoP-bound token is not a bearer token.
            raise ApiCredentialRejected("DPoP-bound token presented as a bearer token",
                                        dpop=True)
        bound = cnf.get("x5t#S256")
        if bound is not None:
            # RFC 8705 §3: only over a connection presenting the certificate it is bound to.
            der = presented.client_cert
            if der is None or not isinstance(bound, str) or \
                    not hmac.compare_digest(bound, x5t_s256(der)):
                raise ApiCredentialRejected("certificate-bound token without its certificate")
        try:
            if revisions is not None:
                revisions.extend(self.revisions(session, claims))
            lifecycle.check_active(session, claims)
        except at.InvalidToken as exc:
            raise ApiCredentialRejected(str(exc), dpop=scheme == "dpop") from exc
        subject = self._identities.find(session, str(claims.get("sub")))
        if subject is None or not self._identities.is_usable(subject):
            raise ApiCredentialRejected("the token's subject is not an active identity",
                                        dpop=scheme == "dpop")
        return claims

    def _check_proof(self, session: Session, presented: Presented, token: str,
                     jkt: str) -> None:
        lifecycle = self._lifecycle
        issuer = lifecycle.tokens.issuer
        # htu may name the request URL or the public one (issuer + path, behind a proxy).
        urls = [presented.url] + ([issuer + presented.path] if presented.path else [])
        proofs = list(presented.dpop)
        verifier = lifecycle.dpop_verifier(SqlReplayCache(session), lambda: session)
        try:
            verifier.verify(",".join(proofs) or None, method=presented.method, urls=urls,
                            now=lifecycle.now(), access_token=token, jkt=jkt, status=401)
        except UseDPoPNonce as exc:
            raise ApiCredentialRejected("DPoP nonce required", dpop=True,
                                        nonce=exc.nonce) from exc
        except OAuthError as exc:
            raise ApiCredentialRejected(f"DPoP proof: {exc.description}", dpop=True) from exc

    @staticmethod
    def revisions(session: Session, claims: dict[str, Any]) -> list[tuple[str, int]]:
        """(identity id, rev) of every party behind the token: what a cached check relied on
        (`identities.rev` moves with any change to an identity or its credentials)."""
        return IdentityService.revisions(session, parties(claims))


__all__ = ["ApiCredentialRejected", "ApiGate", "Presented", "parties"]

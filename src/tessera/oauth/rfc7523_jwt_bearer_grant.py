"""JWT bearer authorization grant — https://www.rfc-editor.org/rfc/rfc7523#section-2.1

A workload exchanges a token its platform signed (a federated token) for a Tessera access token.
Every failure is `invalid_grant` (§3.1); the precise reason goes to the audit log only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from tessera.errors import InvalidGrant, InvalidRequest
from tessera.federation import FederatedIdentity, FederationRejected

if TYPE_CHECKING:
    from tessera.identity import IdentityService
    from tessera.oauth.service import TokenRequest, TokenResponse, TokenService

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class FederatedTokens(Protocol):
    def authenticate_token(self, session: Session, token: str) -> FederatedIdentity: ...


class GrantRejected(InvalidGrant):
    """Uniform `invalid_grant`; `reason` and `client_id` are for the audit log."""

    def __init__(self, reason: str, client_id: str | None = None) -> None:
        super().__init__("the assertion is not accepted")
        self.reason = reason
        self.client_id = client_id


class JWTBearerGrant:
    """`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with a federated assertion."""

    def __init__(self, tokens: TokenService, federation: FederatedTokens,
                 identities: IdentityService) -> None:
        self._tokens = tokens
        self._federation = federation
        self._identities = identities

    def __call__(self, req: TokenRequest) -> TokenResponse:
        from tessera.oauth.service import SqlClients

        assertion = req.form.get("assertion")
        # §2.1: the assertion parameter MUST contain a single JWT.
        if not assertion:
            raise InvalidRequest("assertion is required")
        try:
            fed = self._federation.authenticate_token(req.session, assertion)
        except FederationRejected as exc:
            raise GrantRejected(exc.reason) from exc
        client = SqlClients(req.session, self._identities).find_client(fed.identity_id)
        if client is None or not client.usable:
            raise GrantRejected("mapped identity is not active", fed.identity_id)
        # §3.1: client authentication is optional; when present it must be the same identity.
        if "client_assertion" in req.form or req.client_cert is not None:
            authn = self._tokens.authenticate_client(req)
            if authn.client.client_id != client.client_id:
                raise GrantRejected("authenticated client is not the assertion's identity",
                                    authn.client.client_id)
        scope = self._tokens.grant_scope(req.form.get("scope"), client)
        audience = self._tokens.audience(req.resources, client)
        # Never outlive the platform token it was exchanged for.
        remaining = int(fed.expires_at - req.now.timestamp())
        ttl = self._tokens.lifetime(client, req.now, cap=max(remaining, 0))
        if ttl <= 0:
            raise GrantRejected("assertion expires too soon", client.client_id)
        return self._tokens.issue(
            req, subject=client.client_id, client=client, scope=scope, audience=audience,
            action="jwt_bearer", ttl=ttl,
            data={"method": "federated", "issuer": fed.issuer,
                  "external_subject": fed.subject or ""})

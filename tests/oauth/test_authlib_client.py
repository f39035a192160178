"""A standard client works: Authlib's OAuth2 client with private_key_jwt against the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from tests.conftest import ISSUER, Actor

from tessera.api.app import create_app
from tessera.container import Services

TOKEN = f"{ISSUER}/oauth2/token"


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's private_key_jwt, with 60 s assertions (Authlib's default is one hour, and
    Tessera refuses assertions living longer than `assertion_max_age`, 300 s)."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                        token_endpoint=token_endpoint, header=self.headers,
                                        alg=self.alg, expires_in=60))


def client_for(services: Services, actor: Actor, **kwargs: Any) -> AsyncOAuth2Client:
    auth = ShortLivedPrivateKeyJWT(TOKEN, headers={"kid": actor.kid}, alg="ES256")
    client = AsyncOAuth2Client(client_id=actor.id, client_secret=actor.key,
                               token_endpoint_auth_method=auth,
                               revocation_endpoint_auth_method=auth,
                               transport=httpx.ASGITransport(app=create_app(
                                   services=services, run_jobs=False)),
                               base_url=ISSUER, **kwargs)
    client.register_client_auth_method(auth)
    return client


def test_authlib_client_credentials_refresh_introspect_revoke(
        services: Services, make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["offline_access", "read"])
    rs = make_identity(kind="service")

    async def scenario() -> None:
        async with client_for(services, agent, scope="offline_access read") as client:
            tok = await client.fetch_token(TOKEN, grant_type="client_credentials")
            assert tok["token_type"] == "Bearer" and tok["refresh_token"].startswith("tsr_rt_")
            refreshed = await client.refresh_token(TOKEN, refresh_token=tok["refresh_token"])
            assert refreshed["access_token"] != tok["access_token"]
            assert refreshed["refresh_token"] != tok["refresh_token"]
            async with client_for(services, rs) as rs_client:
                info = await rs_client.introspect_token(f"{ISSUER}/oauth2/introspect",
                                                        token=refreshed["access_token"])
                assert info.status_code == 200 and info.json()["active"] is True
                assert info.json()["client_id"] == agent.id
                resp = await client.revoke_token(f"{ISSUER}/oauth2/revoke",
                                                 token=refreshed["refresh_token"],
                                                 token_type_hint="refresh_token")
                assert resp.status_code == 200
                info = await rs_client.introspect_token(f"{ISSUER}/oauth2/introspect",
                                                        token=refreshed["access_token"])
                assert info.json() == {"active": False}

    asyncio.run(scenario())


def test_authlib_sees_oauth_errors(services: Services,
                                   make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"])

    async def scenario() -> None:
        from authlib.integrations.base_client.errors import OAuthError
        async with client_for(services, agent, scope="write") as client:
            try:
                await client.fetch_token(TOKEN, grant_type="client_credentials")
            except OAuthError as exc:
                assert exc.error == "invalid_scope"
            else:
                raise AssertionError("invalid_scope expected")

    asyncio.run(scenario())

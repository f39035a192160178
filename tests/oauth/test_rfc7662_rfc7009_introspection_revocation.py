"""Introspection (RFC 7662) and revocation (RFC 7009), and what makes a token inactive."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import Actor

from oauth_helpers import claims_of, introspect, revoke, token
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.identity import ADMIN_ROLE
from tessera.oauth.models import RevokedTokenRow


@pytest.fixture
def rs(make_identity: Callable[..., Actor]) -> Actor:
    """A resource server: an identity that introspects."""
    return make_identity(kind="service")


def test_introspection_requires_client_authentication(app_client: TestClient,
                                                       make_identity: Callable[..., Actor]
                                                       ) -> None:
    tok = token(app_client, make_identity()).json()["access_token"]
    resp = app_client.post("/oauth2/introspect", data={"token": tok})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    resp = app_client.post("/oauth2/revoke", data={"token": tok})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


def test_active_token_introspects_with_its_claims(app_client: TestClient, rs: Actor,
                                                  make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"])
    tok = token(app_client, agent).json()["access_token"]
    info = introspect(app_client, rs, tok)
    claims = claims_of(tok)
    assert info["active"] is True and info["token_type"] == "Bearer"
    for name in ("sub", "client_id", "scope", "exp", "iat", "jti", "iss", "aud"):
        assert info[name] == claims[name]


def test_garbage_and_missing_tokens(app_client: TestClient, rs: Actor) -> None:
    assert introspect(app_client, rs, "garbage") == {"active": False}
    assert introspect(app_client, rs, "tsr_rt_garbage") == {"active": False}
    from oauth_helpers import auth_form
    resp = app_client.post("/oauth2/introspect", data=auth_form(rs))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


@pytest.mark.parametrize("event", ["revoked", "client_suspended", "client_decommissioned",
                                   "client_key_revoked", "subject_suspended", "expired"])
def test_inactive_immediately_after(event: str, app_client: TestClient, rs: Actor,
                                    make_identity: Callable[..., Actor], services: Services,
                                    clock: FakeClock) -> None:
    agent = make_identity(allowed_scopes=["read"])
    user = make_identity(kind="human", allowed_scopes=["read"])
    tok = token(app_client, agent).json()["access_token"]
    if event == "subject_suspended":
        from oauth_helpers import AT_TYPE, EXCHANGE
        from tessera.identity.schemas import IdentityUpdate
        with services.sessions() as s:
            services.identities.update(s, agent.id, IdentityUpdate(may_act_for=[user.id]),
                                       actor="t")
            s.commit()
        tok = token(app_client, agent, grant_type=EXCHANGE, subject_token_type=AT_TYPE,
                    subject_token=token(app_client, user).json()["access_token"]
                    ).json()["access_token"]
    assert introspect(app_client, rs, tok)["active"] is True
    with services.sessions() as s:
        if event == "revoked":
            assert revoke(app_client, agent, tok).status_code == 200
        elif event == "client_suspended":
            services.identities.suspend(s, agent.id, actor="t")
        elif event == "client_decommissioned":
            services.identities.decommission(s, agent.id, actor="t")
        elif event == "client_key_revoked":
            clock.advance(1)
            cred = services.identities.credentials(s, agent.id)[0]
            services.identities.revoke_credential(s, agent.id, cred.id, actor="t")
        elif event == "subject_suspended":
            services.identities.suspend(s, user.id, actor="t")
        elif event == "expired":
            clock.advance(claims_of(tok)["exp"] - clock.now().timestamp() + 1)
        s.commit()
    assert introspect(app_client, rs, tok, clock=clock) == {"active": False}


def test_revoked_token_no_longer_opens_the_management_api(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    admin = make_identity(kind="human", roles=(ADMIN_ROLE,))
    tok = token(app_client, admin).json()["access_token"]
    headers = {"Authorization": f"Bearer {tok}"}
    assert app_client.get("/v1/identities", headers=headers).status_code == 200
    assert revoke(app_client, admin, tok).status_code == 200
    assert app_client.get("/v1/identities", headers=headers).status_code == 401


def test_revoking_refresh_token_revokes_family(app_client: TestClient, rs: Actor,
                                               make_identity: Callable[..., Actor],
                                               services: Services) -> None:
    agent = make_identity(allowed_scopes=["offline_access"])
    body = token(app_client, agent).json()
    info = introspect(app_client, agent, body["refresh_token"])
    assert info["active"] is True and info["token_type"] == "refresh_token"
    # Another client learns nothing about someone else's refresh token.
    assert introspect(app_client, rs, body["refresh_token"]) == {"active": False}
    assert revoke(app_client, agent, body["refresh_token"],
                  token_type_hint="refresh_token").status_code == 200
    assert introspect(app_client, agent, body["refresh_token"]) == {"active": False}
    assert introspect(app_client, rs, body["access_token"]) == {"active": False}
    resp = token(app_client, agent, grant_type="refresh_token",
                 refresh_token=body["refresh_token"])
    assert resp.json()["error"] == "invalid_grant"
    with services.sessions() as s:
        assert services.audit.events(s, type="oauth.token_family.revoked")


def test_rejects_revocation_by_another_client(app_client: TestClient, rs: Actor,
                                              make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["offline_access"])
    body = token(app_client, agent).json()
    for tok in (body["access_token"], body["refresh_token"]):
        resp = revoke(app_client, rs, tok)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
        assert introspect(app_client, agent, tok)["active"] is True


def test_unknown_token_revocation_is_ok(app_client: TestClient, rs: Actor) -> None:
    assert revoke(app_client, rs, "whatever").status_code == 200
    assert revoke(app_client, rs, "tsr_rt_whatever", token_type_hint="bogus").status_code == 200


def test_revoked_jti_kept_until_expiry_and_no_longer(app_client: TestClient,
                                                     make_identity: Callable[..., Actor],
                                                     services: Services,
                                                     clock: FakeClock) -> None:
    agent = make_identity()
    tok = token(app_client, agent).json()["access_token"]
    revoke(app_client, agent, tok)
    with services.sessions() as s:
        services.lifecycle.purge(s)
        s.commit()
        assert s.scalars(select(RevokedTokenRow.jti)).all() == [claims_of(tok)["jti"]]
    clock.advance(claims_of(tok)["exp"] - clock.now().timestamp() + 60)
    with services.sessions() as s:
        services.lifecycle.purge(s)
        s.commit()
        assert s.scalars(select(RevokedTokenRow.jti)).all() == []

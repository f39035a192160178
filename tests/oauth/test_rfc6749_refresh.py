"""Refresh tokens (RFC 6749 §6): rotation, family reuse detection, binding, lifetimes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import Actor

from oauth_helpers import count_events, introspect, token
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.oauth.models import RefreshTokenRow, TokenFamilyRow


def _offline(make_identity: Callable[..., Actor], **fields) -> Actor:
    return make_identity(allowed_scopes=["offline_access", "read", "write"], **fields)


def test_issues_prefixed_refresh_token_stored_only_as_hash(
        app_client: TestClient, make_identity: Callable[..., Actor], services: Services) -> None:
    agent = _offline(make_identity)
    resp = token(app_client, agent)
    assert resp.status_code == 200, resp.text
    rt = resp.json()["refresh_token"]
    assert rt.startswith("tsr_rt_") and len(rt) > 40
    with services.sessions() as s:
        rows = s.scalars(select(RefreshTokenRow)).all()
        assert [r.token_hash for r in rows] == [hashlib.sha256(rt.encode()).hexdigest()]
        assert rt not in str(s.scalars(select(TokenFamilyRow)).all()[0].__dict__)


def test_no_refresh_token_without_offline_access(app_client: TestClient,
                                                 make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"])
    body = token(app_client, agent).json()
    assert "refresh_token" not in body
    body = token(app_client, _offline(make_identity), scope="read").json()
    assert "refresh_token" not in body


def test_rotation_returns_new_token_and_retires_old(app_client: TestClient,
                                                   make_identity: Callable[..., Actor]) -> None:
    agent = _offline(make_identity)
    first = token(app_client, agent).json()
    second = token(app_client, agent, grant_type="refresh_token",
                   refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["scope"] == first["scope"]
    third = token(app_client, agent, grant_type="refresh_token",
                  refresh_token=body["refresh_token"])
    assert third.status_code == 200


def test_rejects_reused_refresh_token_and_revokes_family(
        app_client: TestClient, make_identity: Callable[..., Actor], services: Services) -> None:
    agent = _offline(make_identity)
    first = token(app_client, agent).json()
    second = token(app_client, agent, grant_type="refresh_token",
                   refresh_token=first["refresh_token"]).json()
    issued_before = count_events(services, "oauth.token.issued")
    reuse = token(app_client, agent, grant_type="refresh_token",
                  refresh_token=first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "access_token" not in reuse.json()
    assert count_events(services, "oauth.token.issued") == issued_before
    # The whole family is dead: the newest refresh token and every access token.
    newest = token(app_client, agent, grant_type="refresh_token",
                   refresh_token=second["refresh_token"])
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"
    assert introspect(app_client, agent, first["access_token"]) == {"active": False}
    assert introspect(app_client, agent, second["access_token"]) == {"active": False}
    with services.sessions() as s:
        events = services.audit.events(s, type="oauth.refresh_token.reused")
        assert len(events) == 1 and events[0].outcome == "failure"
        assert events[0].data["security_event"] is True
        assert events[0].data["access_tokens_revoked"] == 2


def test_rejects_refresh_by_another_client(app_client: TestClient,
                                           make_identity: Callable[..., Actor],
                                           services: Services) -> None:
    agent, thief = _offline(make_identity), _offline(make_identity)
    rt = token(app_client, agent).json()["refresh_token"]
    issued_before = count_events(services, "oauth.token.issued")
    resp = token(app_client, thief, grant_type="refresh_token", refresh_token=rt)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert count_events(services, "oauth.token.issued") == issued_before
    # The rightful client still can.
    assert token(app_client, agent, grant_type="refresh_token",
                 refresh_token=rt).status_code == 200


def test_rejects_unknown_refresh_token_and_missing_parameter(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    agent = _offline(make_identity)
    resp = token(app_client, agent, grant_type="refresh_token", refresh_token="tsr_rt_nope")
    assert resp.json()["error"] == "invalid_grant"
    resp = token(app_client, agent, grant_type="refresh_token")
    assert resp.json()["error"] == "invalid_request"


def test_refresh_may_narrow_scope_but_never_widen(app_client: TestClient,
                                                  make_identity: Callable[..., Actor]) -> None:
    agent = _offline(make_identity)
    first = token(app_client, agent, scope="offline_access read").json()
    wider = token(app_client, agent, grant_type="refresh_token",
                  refresh_token=first["refresh_token"], scope="read write")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrow = token(app_client, agent, grant_type="refresh_token",
                   refresh_token=first["refresh_token"], scope="read")
    assert narrow.status_code == 200 and narrow.json()["scope"] == "read"


def test_rejects_refresh_after_family_lifetime_and_idle_lifetime(
        app_client: TestClient, make_identity: Callable[..., Actor], clock: FakeClock,
        services: Services) -> None:
    agent = _offline(make_identity)
    rt = token(app_client, agent).json()["refresh_token"]
    clock.advance(services.settings.tokens.refresh_idle_ttl + 1)
    resp = token(app_client, agent, grant_type="refresh_token", refresh_token=rt, clock=clock)
    assert resp.json()["error"] == "invalid_grant"
    rt = token(app_client, agent, clock=clock).json()["refresh_token"]
    for _ in range(4):  # keep it from idling, until the family's absolute limit passes
        clock.advance(services.settings.tokens.refresh_family_ttl / 4)
        resp = token(app_client, agent, grant_type="refresh_token", refresh_token=rt,
                     clock=clock)
        if resp.status_code != 200:
            break
        rt = resp.json()["refresh_token"]
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_refreshed_access_token_never_outlives_family(
        app_client: TestClient, make_identity: Callable[..., Actor], clock: FakeClock,
        services: Services) -> None:
    agent = _offline(make_identity)
    rt = token(app_client, agent).json()["refresh_token"]
    for _ in range(4):  # refresh often enough never to hit the idle limit
        clock.advance((services.settings.tokens.refresh_family_ttl - 100) / 4)
        body = token(app_client, agent, grant_type="refresh_token", refresh_token=rt,
                     clock=clock).json()
        rt = body["refresh_token"]
    assert 0 < body["expires_in"] <= 100


def test_rejects_refresh_when_client_suspended(app_client: TestClient,
                                               make_identity: Callable[..., Actor],
                                               services: Services) -> None:
    agent = _offline(make_identity)
    rt = token(app_client, agent).json()["refresh_token"]
    with services.sessions() as s:
        services.identities.suspend(s, agent.id, actor="test")
        s.commit()
    resp = token(app_client, agent, grant_type="refresh_token", refresh_token=rt)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"

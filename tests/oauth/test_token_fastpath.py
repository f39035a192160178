"""The token endpoint's fast path: cached client views validated by `identities.rev`, and the
replay-cache insert, usage stamps and audit event committed as one unit by the group committer.

Every test here tries to get a token the cache would wrongly allow (or refuse) and checks that
the answer is the one the database gives.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from sqlalchemy import select, text
from tests.conftest import Actor, make_services

from tessera.audit import RequestContext
from tessera.audit.groupcommit import WriteUnit
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.identity.models import IdentityRow
from tessera.identity.schemas import CredentialCreate, IdentityUpdate
from tessera.identity.service import ClientView, KeyView
from tessera.oauth.deferred import HOOK_REPLAY, StaleClient
from tessera.oauth.service import ClientMemo, client_from_view


@pytest.fixture
def agent(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity("fast-agent", allowed_scopes=["read"])


def _token(client: TestClient, actor: Actor, **overrides: Any) -> Any:
    return client.post("/oauth2/token", data=actor.form(**overrides))


def _refusal_reasons(services: Services) -> list[str]:
    with services.sessions() as s:
        return [r for e in services.audit.events(s, type="oauth.token.refused")
                for r in e.reasons]


def _rev(services: Services, identity_id: str) -> int:
    with services.sessions() as s:
        return int(s.scalar(select(IdentityRow.rev).where(IdentityRow.id == identity_id)))


def test_second_token_reads_the_client_from_the_cache(app_client: TestClient, agent: Actor,
                                                      services: Services) -> None:
    cache = services.tokens.clients
    assert cache is not None
    assert _token(app_client, agent).status_code == 200
    loads, hits = cache.loads, cache.hits
    assert _token(app_client, agent).status_code == 200
    assert cache.loads == loads and cache.hits == hits + 1
    with services.sessions() as s:
        assert len(services.audit.events(s, type="oauth.token.issued")) == 2


def test_suspension_is_seen_at_once_despite_the_cache(app_client: TestClient, agent: Actor,
                                                      services: Services) -> None:
    assert _token(app_client, agent).status_code == 200
    with services.sessions() as s:
        services.identities.suspend(s, agent.id, actor="t", reason="test")
        s.commit()
    resp = _token(app_client, agent)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    assert "client is not active" in _refusal_reasons(services)


def test_revoked_key_is_refused_despite_the_cache(app_client: TestClient, agent: Actor,
                                                  services: Services) -> None:
    assert _token(app_client, agent).status_code == 200
    with services.sessions() as s:
        cred = services.identities.credentials(s, agent.id)[0]
        services.identities.revoke_credential(s, agent.id, cred.id, actor="t")
        s.commit()
    assert _token(app_client, agent).status_code == 401


def test_key_added_after_caching_is_accepted(app_client: TestClient, agent: Actor,
                                             services: Services) -> None:
    assert _token(app_client, agent).status_code == 200
    new_key = ECKey.generate_key("P-256", private=True)
    with services.sessions() as s:
        services.identities.add_credential(s, agent.id, CredentialCreate(
            jwk=new_key.as_dict(private=False)), actor="t")
        s.commit()
    resp = _token(app_client, agent, _key=new_key, _header={"kid": new_key.thumbprint()})
    assert resp.status_code == 200, resp.text


def test_scope_withdrawn_after_caching_is_refused(app_client: TestClient, agent: Actor,
                                                  services: Services) -> None:
    assert app_client.post("/oauth2/token", data={**agent.form(), "scope": "read"}
                           ).status_code == 200
    with services.sessions() as s:
        services.identities.update(s, agent.id, IdentityUpdate(allowed_scopes=["other"]),
                                   actor="t")
        s.commit()
    resp = app_client.post("/oauth2/token", data={**agent.form(), "scope": "read"})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_scope"


def test_change_made_outside_tessera_is_seen(app_client: TestClient, agent: Actor,
                                             services: Services) -> None:
    """An operator's UPDATE in psql bumps rev through the trigger, too."""
    assert _token(app_client, agent).status_code == 200
    with services.engine.begin() as conn:
        conn.execute(text("UPDATE identities SET status = 'suspended' WHERE id = :id"),
                     {"id": agent.id})
    assert _token(app_client, agent).status_code == 401


def test_suspension_on_another_node_is_seen(app_client: TestClient, agent: Actor,
                                            settings: Any, clock: FakeClock,
                                            master_key: bytes) -> None:
    assert _token(app_client, agent).status_code == 200
    other = make_services(settings.model_copy(update={"node_id": "node-b"}), clock, master_key)
    try:
        with other.sessions() as s:
            other.identities.suspend(s, agent.id, actor="t", reason="elsewhere")
            s.commit()
    finally:
        other.close()
    assert _token(app_client, agent).status_code == 401


def test_rev_moves_on_registry_changes_but_not_on_usage_stamps(
        services: Services, agent: Actor, clock: FakeClock) -> None:
    start = _rev(services, agent.id)
    with services.sessions() as s:
        view = services.identities.client_view(s, agent.id)
        assert view is not None and view.rev == start
        stamps = services.identities.touch_statements(view, view.keys[0])
        assert len(stamps) == 2  # last_seen_at and last_used_at are both due
        for stmt, params in stamps:
            s.execute(stmt, params)
        s.commit()
    assert _rev(services, agent.id) == start
    with services.sessions() as s:
        services.identities.update(s, agent.id, IdentityUpdate(purpose="new purpose"), actor="t")
        s.commit()
    after_update = _rev(services, agent.id)
    assert after_update > start
    key = ECKey.generate_key("P-256", private=True)
    with services.sessions() as s:
        cred = services.identities.add_credential(s, agent.id, CredentialCreate(
            jwk=key.as_dict(private=False)), actor="t")
        s.commit()
    after_add = _rev(services, agent.id)
    assert after_add > after_update
    with services.sessions() as s:
        services.identities.revoke_credential(s, agent.id, cred.id, actor="t")
        s.commit()
    after_revoke = _rev(services, agent.id)
    assert after_revoke > after_add
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM credentials WHERE id = :id"), {"id": cred.id})
    assert _rev(services, agent.id) > after_revoke


def test_triggers_cover_every_column_but_the_usage_stamps() -> None:
    """A column added to identities or credentials later must join the trigger's list (or be
    declared a usage stamp here): otherwise changing it would leave cached views stale."""
    from importlib import import_module

    from tessera.identity.models import CredentialRow

    migration = import_module("tessera.migrations.versions.0008_registry_rev")
    latest = import_module("tessera.migrations.versions.0011_identity_suspended_at")
    identity_cols = {c.name for c in IdentityRow.__table__.columns}
    credential_cols = {c.name for c in CredentialRow.__table__.columns}
    assert set(latest.IDENTITY_COLUMNS) == identity_cols - {"last_seen_at", "rev"}
    assert set(migration.CREDENTIAL_COLUMNS) == credential_cols - {"last_used_at"}


def test_replayed_jti_within_one_batch_is_refused(services: Services, agent: Actor,
                                                  clock: FakeClock) -> None:
    """Two units claiming one jti in the same committer batch: the first wins."""
    expires = clock.now() + timedelta(minutes=5)
    units = []
    for _ in range(2):
        unit = WriteUnit(events=[services.audit.event("oauth.token.issued", actor=agent.id)])
        unit.add(HOOK_REPLAY, (agent.id, "same-jti", expires, RuntimeError))
        units.append(unit)
    with services.sessions() as s:
        first, second = services.audit.apply_units(s, units)
        s.commit()
    assert isinstance(first, list) and len(first) == 1
    assert isinstance(second, RuntimeError)
    with services.sessions() as s:
        assert len(services.audit.events(s, type="oauth.token.issued")) == 1


def test_concurrent_replays_yield_one_token(app_client: TestClient, agent: Actor,
                                            services: Services) -> None:
    form = agent.form()
    codes: list[int] = []

    def call() -> None:
        codes.append(app_client.post("/oauth2/token", data=form).status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [401] * 5
    assert _refusal_reasons(services).count("jti replayed") == 5


def test_stale_view_is_retried_from_the_database(services: Services, agent: Actor) -> None:
    """A cached view whose rev moved is refused at commit with StaleClient, evicted, and the
    request is served from a fresh read."""
    ctx = RequestContext()
    services.tokens.handle(agent.form(), [], ctx)
    cache = services.tokens.clients
    assert cache is not None
    with services.engine.begin() as conn:  # a change the cache cannot know about
        conn.execute(text("UPDATE identities SET purpose = 'changed' WHERE id = :id"),
                     {"id": agent.id})
    loads = cache.loads
    result = services.tokens.handle(agent.form(), [], ctx)
    assert result.body["access_token"]
    assert cache.loads == loads + 1  # reloaded once after the stale refusal


def test_rev_check_refuses_a_unit_that_relied_on_an_old_view(services: Services,
                                                             agent: Actor) -> None:
    from tessera.oauth.deferred import HOOK_REV

    rev = _rev(services, agent.id)
    unit = WriteUnit(events=[services.audit.event("oauth.token.issued", actor=agent.id)])
    unit.add(HOOK_REV, (agent.id, rev - 1))
    with pytest.raises(StaleClient):
        services.audit.commit_unit(unit)
    with services.sessions() as s:
        assert services.audit.events(s, type="oauth.token.issued") == []


def test_usage_stamps_are_written_by_the_committer(app_client: TestClient, agent: Actor,
                                                   services: Services) -> None:
    assert _token(app_client, agent).status_code == 200
    with services.sessions() as s:
        row = s.get(IdentityRow, agent.id)
        assert row is not None and row.last_seen_at is not None
        assert services.identities.credentials(s, agent.id)[0].last_used_at is not None


def test_expiry_is_evaluated_at_use_not_when_cached(app_client: TestClient,
                                                    services: Services, clock: FakeClock,
                                                    make_identity: Callable[..., Actor]) -> None:
    agent = make_identity("short-lived", expires_at=clock.now() + timedelta(hours=1))
    assert _token(app_client, agent).status_code == 200
    clock.advance(7200)
    now = int(clock.now().timestamp())
    assert _token(app_client, agent, iat=now, exp=now + 60).status_code == 401
    assert "client is not active" in _refusal_reasons(services)


def test_without_group_commit_the_unit_commits_directly(
        settings: Any, clock: FakeClock, master_key: bytes,
        make_identity: Callable[..., Actor]) -> None:
    direct = make_services(settings.model_copy(update={"audit": settings.audit.model_copy(
        update={"group_commit": False})}), clock, master_key)
    try:
        assert direct.audit.committer is None
        agent = make_identity("direct-agent")
        form = agent.form()
        assert direct.tokens.handle(form, [], RequestContext()).body["access_token"]
        with pytest.raises(Exception) as info:
            direct.tokens.handle(form, [], RequestContext())
        assert getattr(info.value, "error", None) == "invalid_client"
        with direct.sessions() as s:
            assert len(direct.audit.events(s, type="oauth.token.issued")) == 1
            assert len(direct.audit.events(s, type="oauth.token.refused")) == 1
    finally:
        direct.close()


def test_event_loop_futures_settle_per_batch_and_survive_cancellation(
        services: Services) -> None:
    """Units submitted from a coroutine resolve on their loop; a request that went away
    (cancelled future) does not break the batch for the others."""
    import asyncio

    async def run() -> tuple[list[Any], bool]:
        first = services.audit.submit_unit(WriteUnit(events=[
            services.audit.event("oauth.token.issued", actor="a")]))
        second = services.audit.submit_unit(WriteUnit(events=[
            services.audit.event("oauth.token.issued", actor="b")]))
        assert first is not None and second is not None
        first.cancel()
        written = await asyncio.wait_for(second, timeout=30)
        return written, first.cancelled()

    written, cancelled = asyncio.run(run())
    assert cancelled and written[0]["actor"] == "b"
    with services.sessions() as s:
        assert {e.actor for e in services.audit.events(s, type="oauth.token.issued")} == \
            {"a", "b"}


@pytest.fixture
def authentications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts client-assertion checks (one per `ClientAssertionVerifier.authenticate`)."""
    from tessera.oauth import rfc7523_client_assertion as rfc7523

    calls: list[str] = []
    real = rfc7523.ClientAssertionVerifier.authenticate

    def counted(self: Any, form: dict[str, str], now: Any) -> Any:
        calls.append("authenticate")
        return real(self, form, now)

    monkeypatch.setattr(rfc7523.ClientAssertionVerifier, "authenticate", counted)
    return calls


@pytest.mark.parametrize("bad", [
    {"client_assertion": "garbage"},
    {"client_assertion": "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."},  # alg none
    {"client_assertion_type": "urn:example:other"},
])
def test_refusal_before_any_client_lookup_is_worked_out_once(
        app_client: TestClient, agent: Actor, services: Services,
        authentications: list[str], bad: dict[str, str]) -> None:
    """A request refused before a client is looked up cannot be answered differently by the
    database: it is audited, not re-verified in a worker thread (a flood of garbage must not
    cost two verifications each)."""
    before = len(_refusal_reasons(services))
    resp = app_client.post("/oauth2/token", data={**agent.form(), **bad})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    assert authentications == ["authenticate"]
    assert len(_refusal_reasons(services)) == before + 1


def test_refusal_resting_on_a_cached_view_is_rechecked(app_client: TestClient, agent: Actor,
                                                       services: Services,
                                                       authentications: list[str]) -> None:
    """A refusal that used a cached client (here: a scope the cached view lacks) is worked out
    again from the database before the client hears it."""
    assert _token(app_client, agent).status_code == 200  # the view is now cached
    authentications.clear()
    resp = app_client.post("/oauth2/token", data={**agent.form(), "scope": "write"})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_scope"
    assert authentications == ["authenticate", "authenticate"]


def test_client_memo_gives_what_a_fresh_build_gives_at_every_instant() -> None:
    """The per-view Client is reused only while no expiry (identity or key) is crossed, in
    either direction, and never for another view of the same client."""
    t0 = datetime(2030, 1, 1, tzinfo=UTC)

    def minutes(n: int) -> datetime:
        return t0 + timedelta(minutes=n)

    view = ClientView("idn_memo", ["read"], [], minutes(20), None, [
        KeyView("c1", "k1", {"kty": "EC"}, None, expires_at=minutes(10)),
        KeyView("c2", "k2", {"kty": "EC"}, None, expires_at=minutes(-5)),
        KeyView("c3", "k3", {"kty": "EC"}, None)])
    memo = ClientMemo()
    for n in (0, 1, -6, -5, -4, 9, 10, 11, 19, 20, 30, 0, -60):
        for now in (minutes(n), minutes(n) - timedelta(microseconds=1)):
            assert memo.client(view, now) == client_from_view(view, now), (n, now)
    assert memo.client(view, minutes(1)) is memo.client(view, minutes(2))  # one span, one build
    assert memo.client(view, minutes(9)) is not memo.client(view, minutes(11))
    suspended = dataclasses.replace(view, status="suspended")
    assert memo.client(suspended, minutes(2)).usable is False
    assert memo.client(view, minutes(2)).usable is True


def test_a_jti_the_replay_cache_cannot_store_is_refused_alone(
        app_client: TestClient, agent: Actor, services: Services) -> None:
    """A NUL in a jti (PostgreSQL's text cannot hold one) is refused for its own request; in
    the committer's batch it would have failed every request committed with it."""
    assert _token(app_client, agent, jti="a\x00b").status_code == 401
    assert _token(app_client, agent).status_code == 200
    assert "missing or invalid jti" in _refusal_reasons(services)

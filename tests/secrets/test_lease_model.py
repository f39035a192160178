"""The lease model with a fake engine, on SQLite and PostgreSQL: caps, expiry, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.secrets.fakes import FakeEngine, fake_target

from tessera.clock import FakeClock
from tessera.container import Services
from tessera.errors import Refused


@pytest.fixture
def fake(services: Services, make_identity: Callable[..., Any]) -> tuple[FakeEngine, Any]:
    engine = fake_target(services, ["user"])
    return engine, make_identity("bot", roles=("user",))


def job(services: Services) -> None:
    services.secrets.end_all_due(services.sessions)


def test_lease_expires_on_time_and_failed_revocations_are_retried(
        services: Services, fake: tuple[FakeEngine, Any], clock: FakeClock) -> None:
    engine, agent = fake
    with services.sessions() as s:
        issued = services.secrets.issue(s, "t", agent.id, actor=agent.id)
        s.commit()
    username = issued.credentials.username
    assert username in engine.accounts
    clock.advance(600)
    engine.fail_revoke = True
    job(services)
    with services.sessions() as s:
        lease = services.secrets.lease(s, issued.lease.id)
        assert (lease.status, lease.attempts) == ("revoking", 1)
        assert lease.last_error == "target unreachable"
    engine.fail_revoke = False
    job(services)
    assert username not in engine.accounts
    with services.sessions() as s:
        assert services.secrets.lease(s, issued.lease.id).status == "expired"


def test_rejects_renewal_beyond_cap_and_keeps_the_old_expiry(
        services: Services, fake: tuple[FakeEngine, Any], clock: FakeClock) -> None:
    engine, agent = fake
    with services.sessions() as s:
        issued = services.secrets.issue(s, "t", agent.id, actor=agent.id)
        s.commit()
    before = engine.accounts[issued.credentials.username]
    clock.advance(300)
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.secrets.renew(s, issued.lease.id, actor=agent.id, increment=1000)
        s.commit()
    assert info.value.code == "renewal_beyond_cap"
    assert engine.accounts[issued.credentials.username] == before
    with services.sessions() as s:
        lease = services.secrets.renew(s, issued.lease.id, actor=agent.id, increment=900)
        s.commit()
        assert lease.expires_at == lease.max_expires_at


def test_rejects_suspended_identity(services: Services, fake: tuple[FakeEngine, Any]) -> None:
    engine, agent = fake
    with services.sessions() as s:
        services.identities.suspend(s, agent.id, actor="test")
        s.commit()
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.secrets.issue(s, "t", agent.id, actor=agent.id)
    assert info.value.code == "identity_inactive" and engine.accounts == {}


def test_admin_secret_is_sealed(services: Services, fake: tuple[FakeEngine, Any]) -> None:
    with services.sessions() as s:
        conn = services.secrets.connection(s, "fake1")
        assert "admin-secret" not in conn.secret_sealed
        assert services.secrets.connection_read(conn).model_dump().get("password") is None

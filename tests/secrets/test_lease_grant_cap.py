"""A dynamic-credential lease never outlives the time-bound (JIT) grant that allowed it: its
expiry is capped at the grant's end, renewal cannot pass it, and a grant ended early revokes
it. On SQLite and PostgreSQL, with a fake secrets engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete
from tests.secrets.fakes import FakeEngine, fake_target

from tessera.access.schemas import AccessRequestCreate, RoleDefine
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.errors import Refused
from tessera.identity.models import GrantRow

GRANT_SECONDS = 300  # shorter than the template's default lease (600 s)


@pytest.fixture
def fake(services: Services) -> FakeEngine:
    engine = fake_target(services, ["db-user"])
    with services.sessions() as s:
        services.access.define_role(s, RoleDefine(name="db-user", max_duration=3600),
                                    actor="test")
        s.commit()
    return engine


@pytest.fixture
def jit_agent(services: Services, fake: FakeEngine, make_identity: Callable[..., Any]) -> Any:
    """An agent holding `db-user` for GRANT_SECONDS through an approved access request."""
    owner = make_identity("dana", kind="human")
    agent = make_identity("etl-bot", owner=owner.id)
    with services.sessions() as s:
        req = services.access.create(s, AccessRequestCreate(
            role="db-user", duration=GRANT_SECONDS, justification="nightly load"),
            requester=agent.id)
        services.access.approve(s, req.id, approver=owner.id)
        s.commit()
    return agent


def issue(services: Services, identity: str, ttl: int | None = None) -> Any:
    with services.sessions() as s:
        out = services.secrets.issue(s, "t", identity, actor=identity, ttl=ttl)
        s.commit()
        return out


def run_lease_job(services: Services) -> None:
    services.secrets.end_all_due(services.sessions)


def test_lease_from_a_jit_grant_is_capped_at_the_grants_end(
        services: Services, fake: FakeEngine, jit_agent: Any, clock: FakeClock) -> None:
    grant_end = clock.now() + timedelta(seconds=GRANT_SECONDS)
    out = issue(services, jit_agent.id)
    assert out.credentials.expires_at == grant_end
    assert out.credentials.max_expires_at == grant_end
    assert fake.accounts[out.credentials.username] == grant_end  # the target's VALID UNTIL


def test_rejects_renewal_past_the_grants_end(services: Services, fake: FakeEngine,
                                             jit_agent: Any, clock: FakeClock) -> None:
    out = issue(services, jit_agent.id, ttl=120)
    clock.advance(60)
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.secrets.renew(s, out.lease.id, actor=jit_agent.id, increment=600)
        s.commit()
    assert info.value.code == "renewal_beyond_cap"
    assert fake.accounts[out.credentials.username] == out.credentials.expires_at


def test_grant_ended_early_revokes_the_lease_and_blocks_renewal(
        services: Services, fake: FakeEngine, jit_agent: Any) -> None:
    out = issue(services, jit_agent.id, ttl=120)
    with services.sessions() as s:
        grant_id = services.access.get(s, services.access.list(
            s, viewer=jit_agent.id)[0].id).grant_id
        services.identities.end_grant(s, grant_id, actor="test", reason="no longer needed")
        s.commit()
    with services.sessions() as s:
        lease = services.secrets.lease(s, out.lease.id)
        assert lease.status == "revoking" and lease.revoke_reason == "grant of role db-user ended"
    run_lease_job(services)
    assert fake.accounts == {}
    with services.sessions() as s:
        assert services.secrets.lease(s, out.lease.id).status == "revoked"


def test_rejects_renewal_once_the_role_is_gone(services: Services, fake: FakeEngine,
                                               make_identity: Callable[..., Any]) -> None:
    """The grant goes without telling anyone (a purge racing the renewal): the renewal itself
    checks that the identity still holds a role the template allows."""
    agent = make_identity("etl-bot", roles=("db-user",))
    out = issue(services, agent.id, ttl=120)
    with services.sessions() as s:
        assert services.identities.roles(s, agent.id) == ["db-user"]
        s.execute(delete(GrantRow).where(GrantRow.identity_id == agent.id))
        s.commit()
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.secrets.renew(s, out.lease.id, actor=agent.id, increment=300)
        s.commit()
    assert info.value.code == "not_permitted"


def test_permanent_grant_keeps_the_templates_cap(services: Services, fake: FakeEngine,
                                                 make_identity: Callable[..., Any],
                                                 clock: FakeClock) -> None:
    agent = make_identity("etl-bot", roles=("db-user",))
    out = issue(services, agent.id)
    assert out.credentials.expires_at == clock.now() + timedelta(seconds=600)
    assert out.credentials.max_expires_at == clock.now() + timedelta(seconds=1200)

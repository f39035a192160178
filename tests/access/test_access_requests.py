"""Access requests: request a role for a while, approve it, hold it, lose it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tessera.access.schemas import AccessRequestCreate, RoleDefine
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.errors import Conflict, Refused

HOUR = 3600


def token(client: TestClient, actor: object) -> dict[str, str]:
    resp = client.post("/oauth2/token", data=actor.form())  # type: ignore[attr-defined]
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


@pytest.fixture
def people(services: Services, make_identity: Callable[..., object]) -> dict[str, object]:
    """An owner, their agent, two approvers holding `db-approvers`, and an outsider."""
    owner = make_identity("alice", kind="human")
    agent = make_identity("report-bot", owner=owner.id)  # type: ignore[attr-defined]
    approver1 = make_identity("bob", kind="human", roles=("db-approvers",))
    approver2 = make_identity("carol", kind="human", roles=("db-approvers",))
    outsider = make_identity("mallory", kind="human")
    with services.sessions() as s:
        services.access.define_role(s, RoleDefine(
            name="db-admin", max_duration=4 * HOUR, approver_role="db-approvers",
            owner_approves=False), actor="test")
        services.access.define_role(s, RoleDefine(
            name="prod-root", max_duration=HOUR, approver_role="db-approvers",
            owner_approves=True, sensitive=True), actor="test")
        services.access.define_role(s, RoleDefine(
            name="reader", max_duration=8 * HOUR, owner_approves=True), actor="test")
        s.commit()
    return {"owner": owner, "agent": agent, "a1": approver1, "a2": approver2,
            "outsider": outsider}


def ask(services: Services, identity: str, role: str, duration: int = HOUR,
        requester: str | None = None) -> str:
    with services.sessions() as s:
        row = services.access.create(s, AccessRequestCreate(
            role=role, identity=identity, duration=duration, justification="quarterly report"),
            requester=requester or identity)
        s.commit()
        return row.id


def refused(services: Services, fn: Callable[..., object], *args: object,
            **kwargs: object) -> Refused:
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            fn(s, *args, **kwargs)
        s.commit()
    return info.value


def audit_types(services: Services) -> list[str]:
    with services.sessions() as s:
        return [e.type for e in services.audit.events(s, limit=1000)]


def test_approved_request_grants_role_until_expiry_then_job_removes_it(
        services: Services, people: dict, clock: FakeClock) -> None:
    agent, a1 = people["agent"], people["a1"]
    rid = ask(services, agent.id, "db-admin", 2 * HOUR)
    with services.sessions() as s:
        assert "db-admin" not in services.identities.roles(s, agent.id)
        req = services.access.approve(s, rid, approver=a1.id, comment="ok")
        s.commit()
        assert req.status == "approved"
        assert "db-admin" in services.identities.roles(s, agent.id)
    clock.advance(2 * HOUR + 1)
    with services.sessions() as s:
        assert "db-admin" not in services.identities.roles(s, agent.id)
        assert services.identities.purge_expired_grants(s) == 1
        s.commit()
    types = audit_types(services)
    for t in ("access.request.created", "access.request.approved", "identity.grant.added",
              "identity.grant.removed"):
        assert t in types


def test_rejects_self_approval_by_the_identity(services: Services, people: dict) -> None:
    agent = people["agent"]
    rid = ask(services, agent.id, "db-admin")
    err = refused(services, services.access.approve, rid, approver=agent.id)
    assert err.code == "self_approval"
    assert "access.decision.refused" in audit_types(services)


def test_rejects_self_approval_by_the_owner_who_asked(services: Services,
                                                     people: dict) -> None:
    agent, owner = people["agent"], people["owner"]
    rid = ask(services, agent.id, "reader", requester=owner.id)
    err = refused(services, services.access.approve, rid, approver=owner.id)
    assert err.code == "self_approval"


def test_rejects_approver_outside_the_approver_set(services: Services, people: dict) -> None:
    rid = ask(services, people["agent"].id, "db-admin")
    err = refused(services, services.access.approve, rid, approver=people["outsider"].id)
    assert err.code == "not_an_approver"
    # The owner is not an approver of db-admin (owner_approves=False) either.
    err = refused(services, services.access.approve, rid, approver=people["owner"].id)
    assert err.code == "not_an_approver"
    with services.sessions() as s:
        assert services.access.get(s, rid).status == "pending"


def test_rejects_duration_above_the_cap(services: Services, people: dict) -> None:
    agent = people["agent"]
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.access.create(s, AccessRequestCreate(
                role="db-admin", duration=4 * HOUR + 1, justification="too long"),
                requester=agent.id)
        s.commit()
    assert info.value.code == "duration_above_cap" and info.value.status == 422


def test_sensitive_role_needs_two_distinct_approvers(services: Services, people: dict) -> None:
    agent, a1, a2 = people["agent"], people["a1"], people["a2"]
    rid = ask(services, agent.id, "prod-root")
    with services.sessions() as s:
        assert services.access.approve(s, rid, approver=a1.id).status == "pending"
        s.commit()
    with services.sessions() as s:
        with pytest.raises(Conflict):
            services.access.approve(s, rid, approver=a1.id)
    with services.sessions() as s:
        assert "prod-root" not in services.identities.roles(s, agent.id)
        assert services.access.approve(s, rid, approver=a2.id).status == "approved"
        s.commit()
        assert "prod-root" in services.identities.roles(s, agent.id)


def test_deny_withdraw_and_expiry_are_recorded(services: Services, people: dict,
                                               clock: FakeClock) -> None:
    agent, a1 = people["agent"], people["a1"]
    r1, r2, r3 = (ask(services, agent.id, "db-admin") for _ in range(3))
    with services.sessions() as s:
        services.access.deny(s, r1, approver=a1.id, comment="not now")
        services.access.withdraw(s, r2, actor=agent.id)
        s.commit()
    clock.advance(services.settings.access.request_ttl + 1)
    with services.sessions() as s:
        assert services.access.expire_undecided(s) == 1
        s.commit()
        assert [services.access.get(s, r).status for r in (r1, r2, r3)] == \
            ["denied", "withdrawn", "expired"]
    with services.sessions() as s:
        with pytest.raises(Conflict):
            services.access.approve(s, r3, approver=a1.id)
    types = audit_types(services)
    for t in ("access.request.denied", "access.request.withdrawn", "access.request.expired"):
        assert t in types


def test_suspended_identity_cannot_request(services: Services, people: dict) -> None:
    agent, owner = people["agent"], people["owner"]
    with services.sessions() as s:
        services.identities.suspend(s, agent.id, actor="test")
        s.commit()
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.access.create(s, AccessRequestCreate(
                role="reader", identity=agent.id, duration=HOUR, justification="x y z"),
                requester=owner.id)
    assert info.value.code == "identity_inactive"


def test_outsider_cannot_request_on_behalf_of_another(services: Services,
                                                      people: dict) -> None:
    with services.sessions() as s:
        with pytest.raises(Refused) as info:
            services.access.create(s, AccessRequestCreate(
                role="reader", identity=people["agent"].id, duration=HOUR,
                justification="sneaky"), requester=people["outsider"].id)
    assert info.value.code == "not_permitted"


def test_decommissioning_cancels_requests_and_ends_grants(services: Services, people: dict,
                                                          clock: FakeClock) -> None:
    agent, a1 = people["agent"], people["a1"]
    granted = ask(services, agent.id, "db-admin")
    pending = ask(services, agent.id, "db-admin")
    with services.sessions() as s:
        services.access.approve(s, granted, approver=a1.id)
        s.commit()
    with services.sessions() as s:
        services.identities.decommission(s, agent.id, actor="test", reason="retired")
        s.commit()
        assert services.access.get(s, pending).status == "cancelled"
        assert services.identities.roles(s, agent.id) == []
        assert services.identities.purge_expired_grants(s) == 1
        s.commit()


def test_api_request_approve_flow_and_refusals(app_client: TestClient, services: Services,
                                               people: dict) -> None:
    agent_h, a1_h = token(app_client, people["agent"]), token(app_client, people["a1"])
    resp = app_client.post("/v1/access-requests", headers=agent_h, json={
        "role": "db-admin", "duration": 3600, "justification": "fix the index"})
    assert resp.status_code == 201, resp.text
    rid = resp.json()["id"]
    assert "db-approvers" in resp.json()["approvers"]
    resp = app_client.post(f"/v1/access-requests/{rid}/approve", headers=agent_h, json={})
    assert resp.status_code == 403 and resp.json()["code"] == "self_approval"
    resp = app_client.get("/v1/access-requests?status=pending", headers=a1_h)
    assert [r["id"] for r in resp.json()["items"]] == [rid]
    resp = app_client.post(f"/v1/access-requests/{rid}/approve", headers=a1_h,
                           json={"comment": "go"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "approved" and resp.json()["grant_expires_at"]
    resp = app_client.post("/v1/access-requests", headers=agent_h, json={
        "role": "db-admin", "duration": 99999, "justification": "too long"})
    assert resp.status_code == 422 and resp.json()["code"] == "duration_above_cap"
    with services.sessions() as s:
        refusals = services.audit.events(s, type="access.decision.refused")
        assert refusals and refusals[0].actor == people["agent"].id
        assert services.audit.verify(s).ok

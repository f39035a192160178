"""Suspending an identity ends what it holds, at once: dynamic-credential leases, pending access
requests it made or that are about it, action approvals for it or that it asked for. The same
path runs for an admin's suspension (API; the CLI calls the API) and the monitor's response;
resuming revives none of it. On SQLite and PostgreSQL, with a fake secrets engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.secrets.fakes import fake_target

from tessera.access import ActionRequest
from tessera.access.schemas import AccessRequestCreate, RoleDefine
from tessera.audit import events as ev
from tessera.container import Services
from tessera.errors import Refused


@pytest.fixture
def holdings(services: Services, make_identity: Callable[..., Any]) -> dict[str, Any]:
    """An agent holding a lease, a pending access request, a pending approval and an approved
    (collected, unused) approval reference; its owner asked for a role for a second agent."""
    engine = fake_target(services, ["db-user"])
    owner = make_identity("dana", kind="human")
    agent = make_identity("payments-bot", owner=owner.id, roles=("db-user",))
    twin = make_identity("twin-bot", owner=owner.id)
    approver = make_identity("erin", kind="human", roles=("finance",))
    act = ActionRequest(agent.id, 'Action::"transfer"', "acct:42", {"amount": 5000})
    with services.sessions() as s:
        services.access.define_role(s, RoleDefine(name="ops", max_duration=3600),
                                    actor="test")
        s.commit()
    with services.sessions() as s:
        lease = services.secrets.issue(s, "t", agent.id, actor=agent.id).lease.id
        s.commit()
    with services.sessions() as s:
        own = services.access.create(s, AccessRequestCreate(
            role="ops", duration=600, justification="on call"), requester=agent.id).id
        by_owner = services.access.create(s, AccessRequestCreate(
            role="ops", identity=twin.id, duration=600, justification="cover"),
            requester=owner.id).id
        pending = services.approvals.open(s, act, requested_by=agent.id, group="finance").id
        approved = services.approvals.open(
            s, ActionRequest(agent.id, 'Action::"transfer"', "acct:7", {"amount": 9000}),
            requested_by=agent.id, group="finance").id
        s.commit()
    with services.sessions() as s:
        services.approvals.approve(s, approved, approver=approver.id)
        s.commit()
    reference = services.approvals.wait(approved, actor=agent.id, timeout=0).approval_reference
    assert reference
    return {"engine": engine, "owner": owner, "agent": agent, "twin": twin, "lease": lease,
            "own_request": own, "owner_request": by_owner, "pending": pending,
            "approved": approved, "reference": reference,
            "approved_request": ActionRequest(agent.id, 'Action::"transfer"', "acct:7",
                                              {"amount": 9000})}


def run_lease_job(services: Services) -> None:
    services.secrets.end_all_due(services.sessions)


def assert_all_ended(services: Services, h: dict[str, Any], reason: str) -> None:
    with services.sessions() as s:
        lease = services.secrets.lease(s, h["lease"])
        assert (lease.status, lease.revoke_reason) == ("revoking", reason)
        request = services.access.get(s, h["own_request"])
        assert (request.status, request.reason) == ("cancelled", reason)
        for aid in (h["pending"], h["approved"]):
            row = services.approvals.get(s, aid)
            assert (row.status, row.reason) == ("cancelled", reason)
        cancelled = services.audit.events(s, type=ev.APPROVAL_CANCELLED)
        assert sorted(e.resource for e in cancelled) == sorted(
            f"approval:{a}" for a in (h["pending"], h["approved"]))
        assert [e.reasons for e in services.audit.events(
            s, type=ev.ACCESS_REQUEST_CANCELLED, subject=h["agent"].id)] == [[reason]]
    run_lease_job(services)  # blocks the login, ends its sessions, drops the account
    assert h["engine"].accounts == {}
    with services.sessions() as s:
        assert services.secrets.lease(s, h["lease"]).status == "revoked"


def test_admin_suspension_through_the_api_ends_everything_and_resuming_revives_nothing(
        app_client: TestClient, admin_headers: dict[str, str], services: Services,
        holdings: dict[str, Any]) -> None:
    h = holdings
    r = app_client.post(f"/v1/identities/{h['agent'].id}/suspend", headers=admin_headers,
                        json={"reason": "investigation"})
    assert r.status_code == 200, r.text
    assert_all_ended(services, h, "identity suspended")
    r = app_client.post(f"/v1/identities/{h['agent'].id}/resume", headers=admin_headers)
    assert r.status_code == 200, r.text
    with services.sessions() as s:
        assert services.secrets.lease(s, h["lease"]).status == "revoked"
        assert services.access.get(s, h["own_request"]).status == "cancelled"
        assert services.approvals.get(s, h["pending"]).status == "cancelled"
    with services.sessions() as s:
        with pytest.raises(Refused):
            services.approvals.use(s, h["reference"], h["approved_request"],
                                   actor=h["agent"].id)
        s.commit()
    assert h["engine"].accounts == {}


def test_monitor_suspension_runs_the_same_path(services: Services,
                                               holdings: dict[str, Any]) -> None:
    assert services.monitor is not None
    with services.sessions() as s:
        row = services.monitor.apply_response(s, holdings["agent"].id, "suspend", 85, 90,
                                              ["unusual volume"])
        s.commit()
    assert row is not None
    assert_all_ended(services, holdings, "identity suspended")


def test_suspending_a_requester_cancels_the_requests_it_made(
        services: Services, holdings: dict[str, Any]) -> None:
    h = holdings
    with services.sessions() as s:
        services.identities.suspend(s, h["owner"].id, actor="test")
        s.commit()
    with services.sessions() as s:
        request = services.access.get(s, h["owner_request"])
        assert (request.status, request.identity_id) == ("cancelled", h["twin"].id)
        # The agent itself was not suspended: its own lease and requests stand.
        assert services.secrets.lease(s, h["lease"]).status == "active"
        assert services.access.get(s, h["own_request"]).status == "pending"

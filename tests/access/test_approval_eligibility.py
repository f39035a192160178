"""Who may say yes to an action approval, judged when the yes is given and whenever it is
relied on; and no caller-written context lifts an approval forbid. On SQLite and PostgreSQL.

Rule: an approval completes, and its reference is accepted, only while enough of the
approvers who said yes are still eligible (active and in the approval's group). A yes from
someone who has since left the group no longer counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from tests.access.test_approvals_via_pdp import approved_reference, ask, world  # noqa: F401
from tests.conftest import bearer_headers as token

from tessera.access import ActionRequest
from tessera.audit import events as ev
from tessera.container import Services
from tessera.errors import Refused
from tessera.identity.models import GrantRow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def leave_group(services: Services, identity_id: str, role: str) -> None:
    with services.sessions() as s:
        s.execute(delete(GrantRow).where(GrantRow.identity_id == identity_id,
                                         GrantRow.role == role))
        s.commit()


def test_rejects_an_approver_outside_the_group_with_403_and_an_audit_event(
        app_client: TestClient, services: Services, world: dict[str, Any]) -> None:  # noqa: F811
    agent, h = world["agent"]
    denied = ask(app_client, h, agent.id, 5000)
    opened = app_client.post("/v1/approvals", headers=h,
                             json=denied["context"]["approval_required"]["request"])
    aid = opened.json()["id"]
    r = app_client.post(f"/v1/approvals/{aid}/approve", headers=world["ops"][1])
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "not_an_approver"
    assert app_client.get(f"/v1/approvals/{aid}", headers=h).json()["status"] == "pending"
    with services.sessions() as s:
        refused = services.audit.events(s, type=ev.ACCESS_DECISION_REFUSED)
        assert [(e.actor, e.reasons) for e in refused] == [(world["ops"][0].id,
                                                            ["not_an_approver"])]


def test_rejects_a_reference_whose_approver_left_the_group_at_the_decision_point(
        app_client: TestClient, services: Services, world: dict[str, Any]) -> None:  # noqa: F811
    agent, h = world["agent"]
    ref = approved_reference(app_client, world, 5000)
    leave_group(services, world["approver"][0].id, "finance")
    out = ask(app_client, h, agent.id, 5000, reference=ref)
    assert out["decision"] is False and "approval_required" in out["context"]
    with services.sessions() as s:
        refused = services.audit.events(s, type=ev.APPROVAL_REFERENCE_REFUSED)
        assert [e.reasons for e in refused] == [["approver_not_eligible"]]


def test_rejects_a_reference_whose_approver_left_the_group_at_verify(
        app_client: TestClient, services: Services, world: dict[str, Any]) -> None:  # noqa: F811
    agent, h = world["agent"]
    ref = approved_reference(app_client, world, 5000)
    leave_group(services, world["approver"][0].id, "finance")
    denied = ask(app_client, h, agent.id, 5000)
    body = {k: v for k, v in denied["context"]["approval_required"]["request"].items()
            if k != "group"}
    r = app_client.post("/v1/approvals/verify", headers=h,
                        json={"approval_reference": ref, **body})
    assert r.status_code == 403 and r.json()["code"] == "approval_invalid", r.text


def test_a_yes_from_a_departed_approver_does_not_complete_a_two_person_approval(
        services: Services, make_identity: Callable[..., Any]) -> None:
    owner = make_identity("dana", kind="human")
    agent = make_identity("payments-bot", owner=owner.id)
    first = make_identity("erin", kind="human", roles=("finance",))
    second = make_identity("fay", kind="human", roles=("finance",))
    request = ActionRequest(agent.id, 'Action::"transfer"', "acct:42", {"amount": 5000})
    with services.sessions() as s:
        aid = services.approvals.open(s, request, requested_by=agent.id, group="finance",
                                      approvals_required=2).id
        services.approvals.approve(s, aid, approver=first.id)
        s.commit()
    leave_group(services, first.id, "finance")
    with services.sessions() as s:
        row = services.approvals.approve(s, aid, approver=second.id)
        s.commit()
        assert row.status == "pending" and row.ref_hash is None


def test_a_reference_still_works_while_its_approver_stays_in_the_group(
        app_client: TestClient, world: dict[str, Any]) -> None:  # noqa: F811
    agent, h = world["agent"]
    ref = approved_reference(app_client, world, 5000)
    assert ask(app_client, h, agent.id, 5000, reference=ref)["decision"] is True


def _cab_world(app_client: TestClient, admin_headers: dict[str, str],
               make_identity: Callable[..., Any], policy: str) -> tuple[Any, dict[str, str]]:
    r = app_client.post("/v1/resources", headers=admin_headers,
                        json={"type": "Tool", "id": "refund",
                              "attributes": {"impact_level": "high"}})
    assert r.status_code == 201, r.text
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"approval.cedar": policy},
                              "schema_fragment": (EXAMPLES / "schema.cedarschema").read_text()})
    assert r.status_code == 201, r.text
    agent = make_identity("summariser", roles=("tool-user", "authz-client"))
    return agent, token(app_client, agent)


OLD_STYLE = (EXAMPLES / "approval.cedar").read_text().rstrip().rstrip(";") + \
    "\nunless { context has approved && context.approved };\n"


@pytest.mark.parametrize("policy", [
    pytest.param((EXAMPLES / "approval.cedar").read_text(), id="the shipped example"),
    pytest.param(OLD_STYLE, id="a policy trusting context.approved"),
])
def test_rejects_caller_supplied_context_approved_over_authzen(
        app_client: TestClient, admin_headers: dict[str, str],
        make_identity: Callable[..., Any], policy: str) -> None:
    agent, h = _cab_world(app_client, admin_headers, make_identity, policy)
    for context in ({"approved": True}, {}):
        r = app_client.post("/access/v1/evaluation", headers=h, json={
            "subject": {"type": "identity", "id": agent.id}, "action": {"name": "execute"},
            "resource": {"type": "Tool", "id": "refund"}, "context": context})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["decision"] is False, (context, out)
        required = out["context"]["approval_required"]
        assert required["group"] == "change-advisory-board"
        assert "approved" not in required["request"]["context"]


def test_refused_use_changes_nothing(services: Services,
                                     make_identity: Callable[..., Any]) -> None:
    """A refused reference stays approved (not spent) and can be used once the approver is
    back in the group within its lifetime."""
    owner = make_identity("dana", kind="human")
    agent = make_identity("payments-bot", owner=owner.id)
    approver = make_identity("erin", kind="human", roles=("finance",))
    request = ActionRequest(agent.id, 'Action::"transfer"', "acct:42", {"amount": 5000})
    with services.sessions() as s:
        aid = services.approvals.open(s, request, requested_by=agent.id, group="finance").id
        services.approvals.approve(s, aid, approver=approver.id)
        s.commit()
    ref = services.approvals.wait(aid, actor=agent.id, timeout=0).approval_reference
    assert ref
    leave_group(services, approver.id, "finance")
    with services.sessions() as s:
        with pytest.raises(Refused):
            services.approvals.use(s, ref, request, actor=agent.id)
        s.commit()
    with services.sessions() as s:
        assert services.approvals.get(s, aid).status == "approved"
        services.identities.grant_role(s, approver.id, "finance", actor="test")
        s.commit()
    with services.sessions() as s:
        assert services.approvals.use(s, ref, request, actor=agent.id).status == "used"
        s.commit()

"""Action approvals end to end through the decision point (AuthZEN over HTTP): a forbid with
`@approval("finance")` denies with `approval_required`; the agent opens the approval, a finance
approver says yes, the agent collects the reference and presents it: permitted once, and never
for a modified request, another actor, another request's reference or another group's yes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import bearer_headers as token

from tessera.audit import events as ev
from tessera.container import Services

POLICY = """
@id("agents-transfer")
permit (principal is Agent, action == Action::"transfer", resource is Account);

@id("big-transfers-need-finance")
@approval("finance")
@reason("transfers above 1000 need a finance approval")
forbid (principal, action == Action::"transfer", resource is Account)
when { context.amount > 1000 };

@id("frozen-accounts")
@reason("the account is frozen")
forbid (principal, action == Action::"transfer", resource is Account)
when { resource has frozen && resource.frozen };
"""
# The action's context, declared so that the policies validate.
SCHEMA = """
type TransferContext = { amount: Long, currency?: String, hour: Long, weekday: String,
  timestamp: Long, source_ip: String, risk_score: Long, principal_status: String };
action "transfer" appliesTo { principal: [Agent, User], resource: [Account],
  context: TransferContext };
"""


@pytest.fixture
def world(app_client: TestClient, admin_headers: dict[str, str],
          make_identity: Callable[..., Any]) -> dict[str, Any]:
    for rid, frozen in (("acme", False), ("other", False), ("ice", True)):
        r = app_client.post("/v1/resources", headers=admin_headers,
                            json={"type": "Account", "id": rid,
                                  "attributes": {"frozen": frozen}})
        assert r.status_code == 201, r.text
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"payments.cedar": POLICY}, "schema_fragment": SCHEMA})
    assert r.status_code == 201, r.text
    owner = make_identity("dana", kind="human")
    cast = {"agent": make_identity("payments-bot", owner=owner.id, roles=("authz-client",)),
            "twin": make_identity("twin-bot", owner=owner.id, roles=("authz-client",)),
            "approver": make_identity("erin", kind="human", roles=("finance",)),
            "ops": make_identity("otto", kind="human", roles=("ops",)),
            "outsider": make_identity("oscar", kind="human"),
            "owner": owner}
    return {name: (actor, token(app_client, actor)) for name, actor in cast.items()}


def ask(client: TestClient, headers: dict[str, str], principal: str, amount: int,
        account: str = "acme", reference: str | None = None, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"amount": amount, "currency": "EUR", **extra}
    if reference is not None:
        context["approval_reference"] = reference
    r = client.post("/access/v1/evaluation", headers=headers,
                    json={"subject": {"type": "identity", "id": principal},
                          "action": {"name": "transfer"},
                          "resource": {"type": "Account", "id": account}, "context": context})
    assert r.status_code == 200, r.text
    return dict(r.json())


def approved_reference(client: TestClient, world: dict[str, Any], amount: int,
                       group_override: str | None = None, approver: str = "approver") -> str:
    agent, agent_h = world["agent"]
    denied = ask(client, agent_h, agent.id, amount)
    body = dict(denied["context"]["approval_required"]["request"])
    if group_override:
        body["group"] = group_override
    opened = client.post("/v1/approvals", headers=agent_h, json=body)
    assert opened.status_code == 201, opened.text
    aid = opened.json()["id"]
    r = client.post(f"/v1/approvals/{aid}/approve", headers=world[approver][1])
    assert r.status_code == 200, r.text
    r = client.get(f"/v1/approvals/{aid}/wait", headers=agent_h, params={"timeout": 0})
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    return str(r.json()["approval_reference"])


def test_small_transfer_is_permitted_without_approval(app_client: TestClient,
                                                      world: dict[str, Any]) -> None:
    agent, h = world["agent"]
    out = ask(app_client, h, agent.id, 500)
    assert out["decision"] is True and "approval_required" not in out["context"]


def test_denial_carries_what_to_ask_for(app_client: TestClient, world: dict[str, Any]) -> None:
    agent, h = world["agent"]
    out = ask(app_client, h, agent.id, 5000)
    assert out["decision"] is False
    assert out["context"]["policies"] == ["big-transfers-need-finance"]
    req = out["context"]["approval_required"]
    assert req["group"] == "finance" and req["policies"] == ["big-transfers-need-finance"]
    # Only the context values the policies look at are bound (currency is not).
    assert req["request"] == {"principal": agent.id, "action": "transfer",
                              "resource": 'Account::"acme"', "context": {"amount": 5000},
                              "group": "finance"}


def test_deny_an_approval_cannot_lift_says_nothing_about_approval(
        app_client: TestClient, world: dict[str, Any]) -> None:
    agent, h = world["agent"]
    out = ask(app_client, h, agent.id, 5000, account="ice")  # frozen: a plain forbid too
    assert out["decision"] is False and "approval_required" not in out["context"]
    out = ask(app_client, h, world["outsider"][0].id, 5000)
    assert out["decision"] is False  # a human with no permit at all
    assert "approval_required" not in out["context"]


def test_full_flow_permits_exactly_once(app_client: TestClient, world: dict[str, Any],
                                        services: Services) -> None:
    agent, h = world["agent"]
    denied = ask(app_client, h, agent.id, 5000)
    opened = app_client.post("/v1/approvals", headers=h,
                             json=denied["context"]["approval_required"]["request"])
    assert opened.status_code == 201, opened.text
    aid = opened.json()["id"]
    assert "finance" in opened.json()["approvers"]
    # Self-approval, the owner (not in finance) and an outsider are refused.
    for who in ("agent", "owner", "outsider", "ops"):
        r = app_client.post(f"/v1/approvals/{aid}/approve", headers=world[who][1])
        assert r.status_code == 403, (who, r.text)
    r = app_client.post(f"/v1/approvals/{aid}/approve", headers=world["approver"][1])
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    ref = app_client.get(f"/v1/approvals/{aid}/wait", headers=h,
                         params={"timeout": 0}).json()["approval_reference"]
    assert ref.startswith("tsr_ap_")

    # Modified amount, resource or actor: refused, and the reference is not spent by it.
    for attempt in (ask(app_client, h, agent.id, 5001, reference=ref),
                    ask(app_client, h, agent.id, 5000, account="other", reference=ref),
                    ask(app_client, world["twin"][1], world["twin"][0].id, 5000,
                        reference=ref)):
        assert attempt["decision"] is False
        assert any("refused" in r for r in attempt["context"]["reasons"]), attempt

    ok = ask(app_client, h, agent.id, 5000, reference=ref, currency="USD")
    assert ok["decision"] is True, ok
    assert ok["context"]["approval"] == {"group": "finance", "used": True,
                                         "policies": ["big-transfers-need-finance"]}
    assert ok["context"]["policies"] == ["agents-transfer"]

    again = ask(app_client, h, agent.id, 5000, reference=ref)
    assert again["decision"] is False and "approval_required" in again["context"]
    assert app_client.get(f"/v1/approvals/{aid}", headers=h).json()["status"] == "used"

    with services.sessions() as s:
        used = services.audit.events(s, type=ev.APPROVAL_REFERENCE_USED, limit=100)
        refused = services.audit.events(s, type=ev.APPROVAL_REFERENCE_REFUSED, limit=100)
        decisions = services.audit.events(s, type=ev.AUTHZ_DECISION, limit=1000)
        assert len(used) == 1 and len(refused) == 4
        assert sorted(e.reasons[0] for e in refused) == [
            "reference_already_used", "request_mismatch", "request_mismatch",
            "request_mismatch"]
        # The reference never reaches the decision log.
        assert decisions and all(ref not in json.dumps(e.data) for e in decisions)


def test_reference_for_another_request_is_refused(app_client: TestClient,
                                                  world: dict[str, Any]) -> None:
    agent, h = world["agent"]
    ref = approved_reference(app_client, world, 7000)
    assert ask(app_client, h, agent.id, 5000, reference=ref)["decision"] is False
    assert ask(app_client, h, agent.id, 1, reference="tsr_ap_forged")["decision"] is True
    assert ask(app_client, h, agent.id, 5000, reference="tsr_ap_forged")["decision"] is False
    # The batch API redeems too, in request order.
    r = app_client.post("/access/v1/evaluations", headers=h, json={
        "subject": {"type": "identity", "id": agent.id}, "action": {"name": "transfer"},
        "resource": {"type": "Account", "id": "acme"},
        "evaluations": [{"context": {"amount": 7000, "approval_reference": ref}},
                        {"context": {"amount": 7000, "approval_reference": ref}}]})
    assert r.status_code == 200, r.text
    assert [e["decision"] for e in r.json()["evaluations"]] == [True, False]


def test_approval_from_another_group_lifts_nothing(app_client: TestClient,
                                                   world: dict[str, Any]) -> None:
    """The agent cannot pick friendlier approvers: the group must be the obligation's."""
    agent, h = world["agent"]
    ref = approved_reference(app_client, world, 5000, group_override="ops", approver="ops")
    out = ask(app_client, h, agent.id, 5000, reference=ref)
    assert out["decision"] is False and out["context"]["approval_required"]["group"] == \
        "finance"

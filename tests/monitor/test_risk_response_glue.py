"""Risk responses reach the rest of the system: "require_approval" is enforced by the
decision point (each permit becomes a deny with `approval_required` that the owner's approval
lifts once), and "notify"/"suspend" reach the owner's webhooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import bearer_headers as token
from tests.loopback import Receiver

from tessera.access.schemas import WebhookCreate
from tessera.access.webhooks import SIGNATURE_HEADER, verify_signature
from tessera.audit import events as ev
from tessera.container import Services
from tessera.monitor.engine import MonitorConfig

POLICY = """
@id("agents-transfer")
permit (principal is Agent, action == Action::"transfer", resource is Account);

@id("frozen-accounts")
forbid (principal, action == Action::"transfer", resource is Account)
when { resource has frozen && resource.frozen };
"""
SCHEMA = """
type TransferContext = { amount: Long, hour: Long, weekday: String,
  timestamp: Long, source_ip: String, risk_score: Long, principal_status: String };
action "transfer" appliesTo { principal: [Agent, User], resource: [Account],
  context: TransferContext };
"""


@pytest.fixture
def world(app_client: TestClient, admin_headers: dict[str, str],
          make_identity: Callable[..., Any]) -> dict[str, Any]:
    for rid, frozen in (("acme", False), ("ice", True)):
        r = app_client.post("/v1/resources", headers=admin_headers,
                            json={"type": "Account", "id": rid,
                                  "attributes": {"frozen": frozen}})
        assert r.status_code == 201, r.text
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"p.cedar": POLICY}, "schema_fragment": SCHEMA})
    assert r.status_code == 201, r.text
    owner = make_identity("dana", kind="human")
    cast = {"agent": make_identity("risky-bot", owner=owner.id, roles=("authz-client",)),
            "outsider": make_identity("oscar", kind="human"), "owner": owner}
    return {name: (actor, token(app_client, actor)) for name, actor in cast.items()}


def ask(client: TestClient, headers: dict[str, str], principal: str, amount: int = 10,
        account: str = "acme", reference: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"amount": amount}
    if reference is not None:
        context["approval_reference"] = reference
    r = client.post("/access/v1/evaluation", headers=headers,
                    json={"subject": {"type": "identity", "id": principal},
                          "action": {"name": "transfer"},
                          "resource": {"type": "Account", "id": account}, "context": context})
    assert r.status_code == 200, r.text
    return dict(r.json())


def flag(services: Services, identity: str) -> str:
    assert services.monitor is not None
    with services.sessions() as s:
        row = services.monitor.apply_response(s, identity, "require_approval", 60, 70,
                                              ["test alert"])
        assert row is not None
        rid = row.id
        s.commit()
    return rid


def test_flagged_agent_needs_owner_approval_once_and_undo_lifts_it(
        app_client: TestClient, world: dict[str, Any], services: Services,
        admin_headers: dict[str, str]) -> None:
    agent, h = world["agent"]
    assert ask(app_client, h, agent.id)["decision"] is True
    rid = flag(services, agent.id)

    denied = ask(app_client, h, agent.id)
    assert denied["decision"] is False
    req = denied["context"]["approval_required"]
    assert req["group"] == "owner"
    assert req["request"] == {"principal": agent.id, "action": "transfer",
                              "resource": 'Account::"acme"', "context": {},
                              "group": "owner"}
    # Denies stay denies, and say nothing about approval.
    frozen = ask(app_client, h, agent.id, account="ice")
    assert frozen["decision"] is False and "approval_required" not in frozen["context"]
    # A forged reference lifts nothing.
    assert ask(app_client, h, agent.id, reference="tsr_ap_forged")["decision"] is False

    opened = app_client.post("/v1/approvals", headers=h, json=req["request"])
    assert opened.status_code == 201, opened.text
    aid = opened.json()["id"]
    for who in ("agent", "outsider"):  # self-approval and strangers are refused
        r = app_client.post(f"/v1/approvals/{aid}/approve", headers=world[who][1])
        assert r.status_code == 403, (who, r.text)
    r = app_client.post(f"/v1/approvals/{aid}/approve", headers=world["owner"][1])
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    ref = app_client.get(f"/v1/approvals/{aid}/wait", headers=h,
                         params={"timeout": 0}).json()["approval_reference"]

    assert ask(app_client, h, agent.id, account="ice", reference=ref)["decision"] is False
    ok = ask(app_client, h, agent.id, reference=ref)
    assert ok["decision"] is True, ok
    assert ok["context"]["approval"]["group"] == "owner"
    again = ask(app_client, h, agent.id, reference=ref)  # once only
    assert again["decision"] is False and "approval_required" in again["context"]

    r = app_client.post(f"/v1/responses/{rid}/undo", json={"reason": "fine"},
                        headers=admin_headers)
    assert r.status_code == 200, r.text
    out = ask(app_client, h, agent.id)
    assert out["decision"] is True and "approval_required" not in out["context"]


def test_unflagged_agents_are_not_gated(app_client: TestClient, world: dict[str, Any],
                                        services: Services,
                                        make_identity: Callable[..., Any]) -> None:
    agent, h = world["agent"]
    other = make_identity("calm-bot", owner=world["owner"][0].id, roles=("authz-client",))
    flag(services, other.id)
    assert ask(app_client, h, agent.id)["decision"] is True


def test_notify_and_suspend_reach_the_owners_webhook(
        services: Services, make_identity: Callable[..., Any], receiver: Receiver) -> None:
    monitor = services.monitor
    assert monitor is not None
    monitor.monitor.config = MonitorConfig(learning_seconds=300, min_events=5)
    monitor.thresholds = {"notify": 40, "require_approval": 60, "suspend": 80}
    owner = make_identity("olga", kind="human")
    stranger = make_identity("sven", kind="human")
    agent = make_identity("leaky-bot", owner=owner.id)
    with services.sessions() as s:
        _row, secret = services.webhooks.create(s, WebhookCreate(
            url=receiver.url, owner=owner.id, events=["monitor.*"]), actor="test")
        services.webhooks.create(s, WebhookCreate(
            url=receiver.url + "/stranger", owner=stranger.id, events=["*"]), actor="test")
        services.audit.record(s, ev.REFRESH_TOKEN_REUSED, actor=agent.id, subject=agent.id,
                              outcome="failure", data={"family": "fam_1"})
        s.commit()
    with services.sessions() as s:
        monitor.process(s)
        s.commit()
    # Two deliveries, both to the owner's webhook (another owner's gets nothing).
    assert services.webhooks.deliver_due(services.sessions) == 2
    got = {}
    for headers, body in receiver.received:
        assert verify_signature(secret, headers[SIGNATURE_HEADER], body)
        payload = json.loads(body)
        assert payload["type"] == ev.OWNER_NOTIFIED and payload["owner"] == owner.id
        got[payload["data"]["response"]] = payload["data"]
    assert set(got) == {"notify", "suspend"}
    for data in got.values():
        assert data["identity"] == agent.id and data["risk"] >= 80
        assert data["reasons"] and all(isinstance(r, str) for r in data["reasons"])
        assert set(data) == {"identity", "response", "response_id", "risk", "threshold",
                             "reasons"}
    assert "fam_1" not in json.dumps(got)

"""Action approvals: one person's yes for one exact request, usable once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import bearer_headers as token

from tessera.access import REF_PREFIX, ActionRequest
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.errors import Conflict, Refused


@pytest.fixture
def cast(make_identity: Callable[..., Any]) -> dict[str, Any]:
    owner = make_identity("dana", kind="human")
    return {"owner": owner,
            "agent": make_identity("payments-bot", owner=owner.id),
            "other": make_identity("other-bot", owner=owner.id),
            "approver": make_identity("erin", kind="human", roles=("finance",)),
            "outsider": make_identity("oscar", kind="human")}


def transfer(principal: str, amount: int = 5000, account: str = "acct:42") -> ActionRequest:
    return ActionRequest(principal, "Action::\"transfer\"", account,
                         {"amount": amount, "currency": "EUR"})


def opened(services: Services, req: ActionRequest, group: str = "finance") -> str:
    with services.sessions() as s:
        row = services.approvals.open(s, req, requested_by=req.principal, group=group)
        s.commit()
        return row.id


def approve_and_collect(services: Services, aid: str, approver: str, actor: str) -> str:
    with services.sessions() as s:
        services.approvals.approve(s, aid, approver=approver)
        s.commit()
    view = services.approvals.wait(aid, actor=actor, timeout=0)
    assert view.status == "approved" and view.approval_reference
    return view.approval_reference


def use(services: Services, ref: str, req: ActionRequest) -> None:
    with services.sessions() as s:
        try:
            services.approvals.use(s, ref, req, actor=req.principal)
        finally:
            s.commit()


def test_summary_is_readable_and_hash_binds_the_request(services: Services,
                                                        cast: dict) -> None:
    req = transfer(cast["agent"].id)
    aid = opened(services, req)
    with services.sessions() as s:
        view = services.approvals.read(s, services.approvals.get(s, aid))
    assert "payments-bot" in view.summary and '"transfer"' in view.summary
    assert "amount = 5000" in view.summary and view.request_hash == req.digest()
    assert transfer(cast["agent"].id, 5001).digest() != req.digest()


def test_approved_reference_is_accepted_once_for_the_same_request(services: Services,
                                                                  cast: dict) -> None:
    req = transfer(cast["agent"].id)
    aid = opened(services, req)
    ref = approve_and_collect(services, aid, cast["approver"].id, cast["agent"].id)
    assert ref.startswith(REF_PREFIX)
    with services.sessions() as s:
        row = services.approvals.get(s, aid)
        assert row.ref_hash and ref not in (row.ref_hash, row.ref_sealed)
        assert row.ref_sealed is None  # collected: no copy left
    use(services, ref, req)
    with pytest.raises(Refused):  # replay
        use(services, ref, req)
    with services.sessions() as s:
        reasons = [e.reasons for e in services.audit.events(
            s, type="access.approval.reference_refused")]
    assert reasons == [["reference_already_used"]]


@pytest.mark.parametrize("modified", [
    pytest.param(lambda p, o: transfer(p, amount=500000), id="different amount"),
    pytest.param(lambda p, o: transfer(p, account="acct:666"), id="different resource"),
    pytest.param(lambda p, o: transfer(o), id="different actor"),
    pytest.param(lambda p, o: ActionRequest(p, "Action::\"delete\"", "acct:42",
                                            {"amount": 5000, "currency": "EUR"}),
                 id="different action"),
])
def test_rejects_reference_used_for_a_modified_request(
        services: Services, cast: dict, modified: Callable[[str, str], ActionRequest]) -> None:
    req = transfer(cast["agent"].id)
    ref = approve_and_collect(services, opened(services, req), cast["approver"].id,
                              cast["agent"].id)
    with pytest.raises(Refused):
        use(services, ref, modified(cast["agent"].id, cast["other"].id))
    use(services, ref, req)  # the untouched request still works, once


def test_rejects_self_approval_and_outsiders(services: Services, cast: dict) -> None:
    aid = opened(services, transfer(cast["agent"].id))
    for who, code in ((cast["agent"].id, "self_approval"),
                      (cast["outsider"].id, "not_an_approver"),
                      (cast["owner"].id, "not_an_approver")):
        with services.sessions() as s:
            with pytest.raises(Refused) as info:
                services.approvals.approve(s, aid, approver=who)
            s.commit()
        assert info.value.code == code


def test_rejects_unknown_and_expired_references(services: Services, cast: dict,
                                                clock: FakeClock) -> None:
    req = transfer(cast["agent"].id)
    with pytest.raises(Refused):
        use(services, REF_PREFIX + "forged", req)
    ref = approve_and_collect(services, opened(services, req), cast["approver"].id,
                              cast["agent"].id)
    clock.advance(services.settings.access.approval_ref_ttl + 1)
    with pytest.raises(Refused):
        use(services, ref, req)


def test_undecided_approval_expires(services: Services, cast: dict, clock: FakeClock) -> None:
    aid = opened(services, transfer(cast["agent"].id))
    clock.advance(services.settings.access.approval_ttl + 1)
    with services.sessions() as s:
        assert services.approvals.expire_due(s) == 1
        s.commit()
    with services.sessions() as s:
        with pytest.raises(Conflict):
            services.approvals.approve(s, aid, approver=cast["approver"].id)
    assert services.approvals.wait(aid, actor=cast["agent"].id, timeout=0).status == "expired"


def test_denied_approval_yields_no_reference(services: Services, cast: dict) -> None:
    aid = opened(services, transfer(cast["agent"].id))
    with services.sessions() as s:
        services.approvals.deny(s, aid, approver=cast["approver"].id, comment="too much")
        s.commit()
    view = services.approvals.wait(aid, actor=cast["agent"].id, timeout=0)
    assert view.status == "denied" and view.approval_reference is None


def test_long_poll_wakes_on_decision(services: Services, cast: dict) -> None:
    aid = opened(services, transfer(cast["agent"].id))
    assert services.approvals.wait(aid, actor=cast["agent"].id, timeout=0).status == "pending"
    started, result = threading.Event(), {}

    def waiter() -> None:
        started.set()
        result["view"] = services.approvals.wait(aid, actor=cast["agent"].id, timeout=60)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(10)
    with services.sessions() as s:
        services.approvals.approve(s, aid, approver=cast["approver"].id)
        s.commit()  # the commit wakes the waiter
    thread.join(30)
    assert not thread.is_alive()
    assert result["view"].status == "approved"
    assert result["view"].approval_reference.startswith(REF_PREFIX)
    # Returned once: a second wait shows the status but no reference.
    assert services.approvals.wait(aid, actor=cast["agent"].id,
                                   timeout=0).approval_reference is None


def test_outsider_cannot_collect_the_reference(services: Services, cast: dict) -> None:
    aid = opened(services, transfer(cast["agent"].id))
    with services.sessions() as s:
        services.approvals.approve(s, aid, approver=cast["approver"].id)
        s.commit()
    view = services.approvals.wait(aid, actor=cast["approver"].id, timeout=0)
    assert view.status == "approved" and view.approval_reference is None
    assert services.approvals.wait(aid, actor=cast["agent"].id, timeout=0).approval_reference


def test_api_flow(app_client: TestClient, services: Services, cast: dict) -> None:
    agent_h, appr_h = token(app_client, cast["agent"]), token(app_client, cast["approver"])
    body = {"principal": cast["agent"].id, "action": "Action::\"transfer\"",
            "resource": "acct:42", "context": {"amount": 5000, "currency": "EUR"},
            "group": "finance"}
    resp = app_client.post("/v1/approvals", headers=agent_h, json=body)
    assert resp.status_code == 201, resp.text
    aid = resp.json()["id"]
    resp = app_client.post("/v1/approvals", headers=agent_h,
                           json={**body, "principal": cast["other"].id})
    assert resp.status_code == 403
    assert app_client.post(f"/v1/approvals/{aid}/approve", headers=agent_h).status_code == 403
    resp = app_client.get(f"/v1/approvals/{aid}", headers=appr_h)
    assert resp.status_code == 200 and "amount = 5000" in resp.json()["summary"]
    assert app_client.post(f"/v1/approvals/{aid}/approve", headers=appr_h).status_code == 200
    resp = app_client.get(f"/v1/approvals/{aid}/wait?timeout=0", headers=agent_h)
    ref = resp.json()["approval_reference"]
    assert ref.startswith(REF_PREFIX)
    use_body = {k: body[k] for k in ("principal", "action", "resource", "context")}
    resp = app_client.post("/v1/approvals/verify", headers=agent_h,
                           json={**use_body, "approval_reference": ref,
                                 "context": {"amount": 9000, "currency": "EUR"}})
    assert resp.status_code == 403 and resp.json()["code"] == "approval_invalid"
    resp = app_client.post("/v1/approvals/verify", headers=agent_h,
                           json={**use_body, "approval_reference": ref})
    assert resp.status_code == 200 and resp.json()["status"] == "used"
    resp = app_client.post("/v1/approvals/verify", headers=agent_h,
                           json={**use_body, "approval_reference": ref})
    assert resp.status_code == 403
    with services.sessions() as s:
        assert services.audit.verify(s).ok
        assert not any(ref in str(e.data) for e in services.audit.events(s, limit=1000))

"""The decision point's fast path: PDP callers remembered per token for a bounded time, the
risk gate answered from memory, decisions answered on the event loop with their audit event
awaited from the group committer — and every refusal that must stay a refusal."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from tests.conftest import bearer_headers as token
from tests.conftest import make_services

from tessera.api.app import create_app
from tessera.api.routers import authzen as authzen_router
from tessera.authz.callers import CallerCache
from tessera.config import Settings
from tessera.container import Services
from tessera.db.invalidation import on_commit_touching
from tessera.identity.models import CredentialRow, IdentityRow

POLICY = 'permit (principal == User::"alice", action == Action::"read", resource is Dataset);'
BODY = {"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
        "resource": {"type": "Dataset", "id": "d1"}}


@pytest.fixture
def pdp(app_client: TestClient, admin_headers: dict[str, str]) -> dict[str, str]:
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"p.cedar": POLICY}})
    assert r.status_code == 201, r.text
    r = app_client.post("/v1/entities", headers=admin_headers, json={"entities": [
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]})
    assert r.status_code == 200, r.text
    return admin_headers


def claims_of(headers: dict[str, str]) -> dict[str, Any]:
    payload = headers["Authorization"].split()[1].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def evaluate(client: TestClient, headers: dict[str, str], body: Any = None) -> Any:
    return client.post("/access/v1/evaluation", headers=headers, json=body or BODY)


def count_full_checks(monkeypatch: pytest.MonkeyPatch, services: Services) -> list[str]:
    calls: list[str] = []
    assert services.gate is not None
    real = services.gate.authenticate

    def spy(session: Any, presented: Any, revisions: Any = None) -> dict[str, Any]:
        calls.append(presented.authorization[:16])
        return real(session, presented, revisions)

    monkeypatch.setattr(services.gate, "authenticate", spy)
    return calls


# -- the caller cache --------------------------------------------------------------------


def test_caller_cache_keeps_a_digest_for_at_most_ttl_and_never_past_exp(clock: Any) -> None:
    cache = CallerCache(clock, ttl=2.0)
    exp = clock.now().timestamp() + 60
    cache.put("tok-a", {"sub": "x", "exp": exp}, cache.generation)
    assert cache.get("tok-a") == {"sub": "x", "exp": exp}
    assert cache.get("tok-b") is None
    assert all(isinstance(k, bytes) and b"tok-a" not in k for k in cache._entries)
    clock.advance(2)
    assert cache.get("tok-a") is None  # stale: the full check runs again
    cache.put("tok-c", {"sub": "x", "exp": clock.now().timestamp() + 1}, cache.generation)
    clock.advance(1)
    assert cache.get("tok-c") is None  # expired, even within ttl


def test_caller_cache_drops_a_check_that_raced_a_change(clock: Any) -> None:
    cache = CallerCache(clock, ttl=5.0)
    started = cache.generation
    cache.clear()  # e.g. a revocation committed while the token was being checked
    cache.put("tok", {"sub": "x", "exp": clock.now().timestamp() + 60}, started)
    assert cache.get("tok") is None
    off = CallerCache(clock, ttl=0)
    off.put("tok", {"sub": "x", "exp": clock.now().timestamp() + 60}, off.generation)
    assert off.get("tok") is None


def test_commit_hook_sees_core_updates_and_ignores_rollbacks(services: Services) -> None:
    seen: list[int] = []
    on_commit_touching(services.sessions, [CredentialRow], lambda: seen.append(1))
    with services.sessions() as s:
        s.execute(update(CredentialRow).where(CredentialRow.id == "none").values(status="x"))
        s.rollback()
    assert seen == []
    with services.sessions() as s:
        s.execute(update(CredentialRow).where(CredentialRow.id == "none").values(status="x"))
        s.commit()
    assert seen == [1]


def test_issuing_a_token_does_not_empty_the_caller_cache(
        services: Services, make_identity: Callable[..., Any]) -> None:
    """Token issuance stamps last_seen_at/last_used_at on the identity and its key: no change
    to anything a caller check reads, so it must not cost every PDP caller its cached check
    (before the usage-stamp option, each issued token emptied the cache). A real change to
    the same rows still empties it."""
    from tessera.audit import RequestContext

    assert services.callers is not None
    agent = make_identity("stamped-agent")
    before = services.callers.generation
    services.tokens.handle(agent.form(), [], RequestContext())  # stamps due: first use
    with services.sessions() as s:
        row = s.get(IdentityRow, agent.id)
        assert row is not None and row.last_seen_at is not None
    assert services.callers.generation == before
    with services.sessions() as s:
        s.execute(update(IdentityRow).where(IdentityRow.id == agent.id).values(purpose="p2"))
        s.commit()
    assert services.callers.generation == before + 1


def test_a_pdp_caller_is_checked_in_full_once_per_ttl(
        app_client: TestClient, pdp: dict[str, str], services: Services, clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_full_checks(monkeypatch, services)
    for _ in range(3):
        assert evaluate(app_client, pdp).json()["decision"] is True
    assert len(calls) == 1
    clock.advance(services.settings.authz.caller_cache_seconds + 0.5)
    assert evaluate(app_client, pdp).json()["decision"] is True
    assert len(calls) == 2


def test_without_the_cache_every_request_is_checked_in_full(
        settings: Settings, clock: Any, master_key: bytes, admin_headers: dict[str, str],
        pdp: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    off = settings.model_copy(update={"authz": settings.authz.model_copy(
        update={"caller_cache_seconds": 0.0})})
    svc = make_services(off, clock, master_key)
    try:
        calls = count_full_checks(monkeypatch, svc)
        with TestClient(create_app(services=svc, run_jobs=False),
                        base_url="http://tessera.test") as c:
            for _ in range(3):
                assert evaluate(c, pdp).json()["decision"] is True
        assert len(calls) == 3
    finally:
        svc.close()


def test_a_token_revoked_on_this_node_is_refused_at_once(
        app_client: TestClient, pdp: dict[str, str], services: Services) -> None:
    assert evaluate(app_client, pdp).status_code == 200  # now in the cache
    claims = claims_of(pdp)
    with services.sessions() as s:
        services.lifecycle.revoke_jti(s, claims["jti"], claims["exp"])
        s.commit()
    assert evaluate(app_client, pdp).status_code == 401


def test_a_caller_suspended_on_this_node_is_refused_at_once(
        app_client: TestClient, pdp: dict[str, str], services: Services,
        make_identity: Callable[..., Any]) -> None:
    pep = make_identity("pep", roles=("authz-client",))
    h = token(app_client, pep)
    assert evaluate(app_client, h).json()["decision"] is True
    r = app_client.post(f"/v1/identities/{pep.id}/suspend", headers=pdp, json={"reason": "t"})
    assert r.status_code == 200, r.text
    assert evaluate(app_client, h).status_code in (401, 403)


@pytest.mark.parametrize("change", ["revoke_token", "suspend", "revoke_key"])
def test_a_change_made_on_another_node_refuses_the_cached_caller_at_once(
        app_client: TestClient, settings: Settings, clock: Any, master_key: bytes,
        make_identity: Callable[..., Any], pdp: dict[str, str], change: str) -> None:
    pep = make_identity("pep-b", roles=("authz-client",))
    h = token(app_client, pep)
    other = make_services(settings.model_copy(update={"node_id": "node-b"}), clock,
                          master_key)
    try:
        assert evaluate(app_client, h).status_code == 200  # now in this node's cache
        claims = claims_of(h)
        with other.sessions() as s:
            if change == "revoke_token":
                other.lifecycle.revoke_jti(s, claims["jti"], claims["exp"])
            elif change == "suspend":
                other.identities.suspend(s, pep.id, actor="test")
            else:
                (cred,) = other.identities.credentials(s, pep.id)
                other.identities.revoke_credential(s, pep.id, cred.id, actor="test")
            s.commit()
        # Within the cache's lifetime: the decision's commit re-validates the cached caller.
        assert evaluate(app_client, h).status_code in (401, 403)
    finally:
        other.close()


# -- answering from memory -----------------------------------------------------------------


def test_decisions_answer_from_memory_and_their_event_is_committed_first(
        app_client: TestClient, pdp: dict[str, str], services: Services,
        monkeypatch: pytest.MonkeyPatch) -> None:
    session_path: list[bool] = []
    real = authzen_router._evaluate

    def spy(*args: Any) -> Any:
        session_path.append(True)
        return real(*args)

    monkeypatch.setattr(authzen_router, "_evaluate", spy)
    monkeypatch.setattr(services.authz, "_interval", 3600.0)  # no version check due meanwhile
    evaluate(app_client, pdp)  # first sight of the token, snapshots loaded
    services.authz.refresh()
    session_path.clear()
    batch = {"subject": BODY["subject"], "action": BODY["action"],
             "evaluations": [{"resource": {"type": "Dataset", "id": f"d{i}"}}
                             for i in range(3)]}
    r = app_client.post("/access/v1/evaluations", headers=pdp, json=batch)
    assert [e["decision"] for e in r.json()["evaluations"]] == [True, True, True]
    assert session_path == []
    with services.sessions() as s:  # committed before the response left
        events = services.audit.events(s, type="authz.decision.made", limit=1000)
        ours = [e for e in events if e.action == "evaluations"]
        assert len(ours) == 1 and len(ours[0].data["decisions"]) == 3
        assert ours[0].request_id == r.headers["x-request-id"]
        assert services.audit.verify(s).ok
    # An approval reference is spent in a transaction: the session path.
    body = {**BODY, "context": {"approval_reference": "tsr_ap_forged"}}
    assert evaluate(app_client, pdp, body).json()["decision"] is True
    assert session_path == [True]


def test_a_hidden_approval_reference_is_never_honoured_from_memory(
        services: Services, app_client: TestClient, pdp: dict[str, str]) -> None:
    from tessera.authz.approvals import _redeem
    from tessera.authz.ports import ApprovalBinding

    bound = ApprovalBinding("p", "a", 'R::"r"', {}, "owner")
    assert _redeem(None, "tsr_ap_x", bound, lambda *a, **k: None, None, None) == \
        "approval_unavailable"


def test_risk_gate_follows_this_node_at_once_and_others_within_the_bound(
        services: Services, settings: Settings, clock: Any, master_key: bytes,
        make_identity: Callable[..., Any]) -> None:
    gate = services.authz.approval_gate
    assert gate is not None and services.monitor is not None
    agent, other_agent = make_identity("flag-me"), make_identity("flag-me-too")
    assert gate(None, agent.id) is None
    with services.sessions() as s:  # this node: the commit empties the gate's memory
        assert services.monitor.apply_response(s, agent.id, "require_approval", 60, 70,
                                               ["t"]) is not None
        s.commit()
    assert gate(None, agent.id) == "owner"
    other = make_services(settings.model_copy(update={"node_id": "node-b"}), clock,
                          master_key)
    try:
        assert gate(None, other_agent.id) is None
        assert other.monitor is not None
        with other.sessions() as s:
            assert other.monitor.apply_response(s, other_agent.id, "require_approval", 60,
                                                70, ["t"]) is not None
            s.commit()
        assert gate(None, other_agent.id) is None  # within the documented window
        clock.advance(settings.authz.risk_gate_cache_seconds + 0.5)
        assert gate(None, other_agent.id) == "owner"
    finally:
        other.close()


def test_a_stale_risk_score_is_read_on_a_worker_thread_never_on_the_event_loop(
        app_client: TestClient, pdp: dict[str, str], services: Services,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory path answers on the event loop: a risk score due for a read (its cache
    stale) moves the request to a worker thread, which reads it; the decision is the same."""
    import asyncio

    monitor = services.monitor
    assert monitor is not None
    monkeypatch.setattr(services.authz, "_interval", 3600.0)  # no version check due meanwhile
    assert evaluate(app_client, pdp).json()["decision"] is True  # caller cached, snapshots
    services.authz.refresh()
    assert evaluate(app_client, pdp).json()["decision"] is True  # answered from memory

    opened_on_loop: list[bool] = []
    real = monitor._readonly

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            opened_on_loop.append(True)
        except RuntimeError:  # no loop running on this thread: a worker thread
            opened_on_loop.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(monitor, "_readonly", recording)
    monitor._risk_cache.clear()  # every score is due for a read
    assert evaluate(app_client, pdp).json()["decision"] is True
    assert opened_on_loop and True not in opened_on_loop
    batch = {"subject": BODY["subject"], "action": BODY["action"],
             "evaluations": [{"resource": {"type": "Dataset", "id": f"d{i}"}}
                             for i in range(3)]}
    monitor._risk_cache.clear()
    r = app_client.post("/access/v1/evaluations", headers=pdp, json=batch)
    assert [e["decision"] for e in r.json()["evaluations"]] == [True, True, True]
    assert True not in opened_on_loop


"""The monitor reads the audit stream, raises explained alerts, scores risk and responds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tessera.audit import RequestContext
from tessera.audit import events as ev
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.monitor.engine import MonitorConfig


def setup_monitor(services: Services, **thresholds: int) -> Any:
    monitor = services.monitor
    assert monitor is not None
    monitor.monitor.config = MonitorConfig(learning_seconds=300, min_events=5)
    if thresholds:
        monitor.thresholds = thresholds
    return monitor


def act(services: Services, who: str, *, source: str = "10.0.0.7", resource: str = "ds:a",
        outcome: str = "success", type: str = "authz.decision.made", **data: Any) -> None:
    with services.sessions() as s:
        services.audit.record(s, type, actor=who, subject=who, action="read",
                              resource=resource, outcome=outcome, data=data,
                              ctx=RequestContext(source=source))
        s.commit()


def process(services: Services) -> None:
    assert services.monitor is not None
    with services.sessions() as s:
        services.monitor.process(s)
        s.commit()


def learn(services: Services, clock: FakeClock, who: str, n: int = 12) -> None:
    for _ in range(n):
        act(services, who)
        clock.advance(60)
    process(services)


def test_new_network_after_learning_raises_an_explained_alert_and_risk(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any]) -> None:
    monitor = setup_monitor(services)
    agent = make_identity("agent-net")
    learn(services, clock, agent.id)
    assert monitor.risk_of(agent.id) == 0
    act(services, agent.id, source="203.0.113.9")
    process(services)
    with services.sessions() as s:
        alerts, _ = monitor.alerts(s, identity=agent.id)
        risk = monitor.risk_of(agent.id, s)
    assert [a.detector for a in alerts] == ["new_network"]
    assert "203.0.113.0/24" in alerts[0].summary and alerts[0].summary.endswith(".")
    assert risk == 45


def test_risk_decays_with_the_clock(services: Services, clock: FakeClock,
                                    make_identity: Callable[..., Any]) -> None:
    monitor = setup_monitor(services)
    agent = make_identity("agent-decay")
    with services.sessions() as s:
        monitor.set_risk(s, agent.id, 80)
        s.commit()
    clock.advance(hours=6)  # one half-life
    assert monitor.risk_of(agent.id) == 40


def test_no_alert_during_the_learning_period(services: Services, clock: FakeClock,
                                             make_identity: Callable[..., Any]) -> None:
    monitor = setup_monitor(services)
    agent = make_identity("agent-new")
    act(services, agent.id)
    act(services, agent.id, source="198.51.100.1", resource="ds:other")
    process(services)
    with services.sessions() as s:
        assert monitor.alerts(s, identity=agent.id)[0] == []


def test_refresh_token_reuse_suspends_and_undo_resumes(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        app_client: TestClient, admin_headers: dict[str, str]) -> None:
    monitor = setup_monitor(services, notify=40, require_approval=60, suspend=80)
    agent = make_identity("agent-reuse")
    revoked: list[str] = []
    monitor.token_revokers.append(lambda _s, ident: revoked.append(ident) or 3)
    with services.sessions() as s:
        services.audit.record(s, ev.REFRESH_TOKEN_REUSED, actor=agent.id, subject=agent.id,
                              outcome="failure", data={"family": "fam_1"})
        s.commit()
    process(services)
    with services.sessions() as s:
        ident = services.identities.get(s, agent.id)
        assert ident.status == "suspended"
        kinds = sorted(r.kind for r in monitor.responses(s, identity=agent.id))
        assert kinds == ["notify", "require_approval", "suspend"]
        assert monitor.requires_approval(s, agent.id)
        types = [e.type for e in services.audit.events(s, subject=agent.id, limit=1000)]
    assert revoked == [agent.id]
    for t in (ev.ALERT_RAISED, ev.RESPONSE_APPLIED, ev.IDENTITY_SUSPENDED, ev.OWNER_NOTIFIED):
        assert t in types
    # An administrator undoes the suspension through the API.
    resp = app_client.get(f"/v1/responses?identity={agent.id}&status=active",
                          headers=admin_headers)
    suspend = next(r for r in resp.json()["items"] if r["kind"] == "suspend")
    resp = app_client.post(f"/v1/responses/{suspend['id']}/undo",
                           json={"reason": "investigated"}, headers=admin_headers)
    assert resp.status_code == 200, resp.text
    assert app_client.post(f"/v1/responses/{suspend['id']}/undo",
                           headers=admin_headers).status_code == 409
    with services.sessions() as s:
        assert services.identities.get(s, agent.id).status == "active"
        assert monitor.risk_of(agent.id, s) < 80
        assert ev.RESPONSE_UNDONE in [e.type for e in services.audit.events(
            s, subject=agent.id, limit=1000)]


def test_alerts_and_risk_api(services: Services, clock: FakeClock,
                             make_identity: Callable[..., Any], app_client: TestClient,
                             admin_headers: dict[str, str]) -> None:
    setup_monitor(services)
    agent = make_identity("agent-api")
    learn(services, clock, agent.id)
    for _ in range(6):
        act(services, agent.id, outcome="failure", resource="ds:secret")
    process(services)
    alerts = app_client.get(f"/v1/alerts?identity={agent.id}", headers=admin_headers).json()
    detectors = {a["detector"] for a in alerts["items"]}
    assert "denial_burst" in detectors
    risk = app_client.get(f"/v1/risk/{agent.id}", headers=admin_headers).json()
    assert risk["risk"] > 0
    alert_id = alerts["items"][0]["id"]
    assert app_client.post(f"/v1/alerts/{alert_id}/resolve", headers=admin_headers
                           ).json()["status"] == "resolved"
    assert app_client.get("/v1/alerts?status=bogus", headers=admin_headers).status_code == 422
    assert app_client.get("/v1/risk/nobody", headers=admin_headers).status_code == 404
    resp = app_client.put(f"/v1/risk/{agent.id}", json={"risk": 101}, headers=admin_headers)
    assert resp.status_code == 422


def test_monitor_reads_only_new_events(services: Services, clock: FakeClock,
                                       make_identity: Callable[..., Any]) -> None:
    monitor = setup_monitor(services)
    agent = make_identity("agent-cursor")
    act(services, agent.id)
    with services.sessions() as s:
        first = monitor.process(s)
        s.commit()
    with services.sessions() as s:
        assert monitor.process(s) == 0
    assert first > 0


def test_refused_token_requests_naming_a_victim_do_not_raise_its_risk(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        app_client: TestClient) -> None:
    monitor = setup_monitor(services)
    victim = make_identity("agent-victim")
    learn(services, clock, victim.id)
    for _ in range(20):  # anyone can claim to be the victim and fail
        form = victim.form(_key=make_identity().key)
        assert app_client.post("/oauth2/token", data=form).status_code == 401
    process(services)
    with services.sessions() as s:
        assert monitor.alerts(s, identity=victim.id)[0] == []
        assert services.identities.get(s, victim.id).status == "active"


def _holder(services: Services) -> Any:
    """The monitor of another worker process, holding the stream's lease; `services.monitor`
    (the one the API calls) is then a process that does not."""
    from tessera.db.engine import make_session_factory
    from tessera.monitor.service import MonitorService

    return MonitorService(services.clock, services.audit, services.identities,
                          make_session_factory(services.engine, readonly=True),
                          config=MonitorConfig(learning_seconds=300, min_events=5),
                          thresholds={"notify": 99})


def _pass(monitor: Any, services: Services) -> int:
    with services.sessions() as s:
        done = monitor.process(s)
        s.commit()
    return int(done)


def test_risk_set_through_another_process_holds_in_the_stream_holder(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        app_client: TestClient, admin_headers: dict[str, str]) -> None:
    """An administrator resets an identity's risk through a worker that does not hold the
    stream. The holder's memory still has the old score: its next alert for the identity must
    add to the reset score, not write its own old one back."""
    holder = _holder(services)
    agent = make_identity("agent-reset")
    for _ in range(12):
        act(services, agent.id)
        clock.advance(60)
    act(services, agent.id, source="203.0.113.9")  # a new network: risk 45
    assert _pass(holder, services) > 0
    with services.sessions() as s:
        assert holder.risk_of(agent.id, s) == 45
    resp = app_client.put(f"/v1/risk/{agent.id}", json={"risk": 0, "reason": "checked"},
                          headers=admin_headers)
    assert resp.status_code == 200, resp.text
    assert _pass(services.monitor, services) == 0  # not the holder: it leaves the stream
    act(services, agent.id, source="198.51.100.7")  # another new network: 45 more
    assert _pass(holder, services) > 0
    with services.sessions() as s:
        # From 0, not from 45 (which would make 1 - 0.55 ** 2 = 70).
        assert holder.risk_of(agent.id, s) == 45
        assert services.monitor.risk_of(agent.id, s) == 45


def test_an_undone_response_holds_in_the_stream_holder(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        app_client: TestClient, admin_headers: dict[str, str]) -> None:
    """Undoing a response through a worker that does not hold the stream lowers the risk
    below the response's threshold in the holder's memory too: the holder's next alert adds
    to the lowered score, not to the one that took the response."""
    holder = _holder(services)
    holder.thresholds = {"require_approval": 60}
    agent = make_identity("agent-undo")

    def reused(family: str) -> None:
        with services.sessions() as s:
            services.audit.record(s, ev.REFRESH_TOKEN_REUSED, actor=agent.id,
                                  subject=agent.id, outcome="failure", data={"family": family})
            s.commit()

    reused("fam_1")
    assert _pass(holder, services) > 0
    with services.sessions() as s:
        first = holder.risk_of(agent.id, s)  # the alert's score, from 0
    assert first >= 60
    resp = app_client.get(f"/v1/responses?identity={agent.id}&status=active",
                          headers=admin_headers)
    (response,) = resp.json()["items"]
    resp = app_client.post(f"/v1/responses/{response['id']}/undo", json={"reason": "ok"},
                           headers=admin_headers)
    assert resp.status_code == 200, resp.text
    reused("fam_2")  # the same alert again
    assert _pass(holder, services) > 0
    with services.sessions() as s:
        risk = holder.risk_of(agent.id, s)
    # Risks combine like independent probabilities: from 59, not from `first` again.
    assert risk == round(100 * (1 - 0.41 * (1 - first / 100)))
    assert risk != round(100 * (1 - (1 - first / 100) ** 2))


def test_risk_set_while_the_holder_learns_ends_in_the_table(
        services: Services, clock: FakeClock, make_identity: Callable[..., Any],
        app_client: TestClient, admin_headers: dict[str, str],
        monkeypatch: Any) -> None:
    """The administrator's reset commits while the holder is mid-pass (it has read the
    stream, not yet written): that pass stores its alert's score, and the next one, which
    reaches the reset in the stream, must store the reset in the table `risk_of` reads, even
    with no alert of its own."""
    holder = _holder(services)
    agent = make_identity("agent-midpass")
    for _ in range(12):
        act(services, agent.id)
        clock.advance(60)
    assert _pass(holder, services) > 0
    act(services, agent.id, source="203.0.113.9")  # a new network: risk 45
    real, done = holder.monitor.observe, []

    def observe(e: Any) -> Any:
        if not done:
            done.append(1)
            resp = app_client.put(f"/v1/risk/{agent.id}", json={"risk": 0},
                                  headers=admin_headers)
            assert resp.status_code == 200, resp.text
        return real(e)

    monkeypatch.setattr(holder.monitor, "observe", observe)
    assert _pass(holder, services) > 0
    with services.sessions() as s:
        assert holder.risk_of(agent.id, s) == 45  # the pass read the stream before the reset
    assert _pass(holder, services) > 0  # the reset's event
    with services.sessions() as s:
        assert holder.risk_of(agent.id, s) == 0

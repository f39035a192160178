"""Group commit: a caller's commit returns only once its events are durable, and a failed
audit write means no token leaves the server."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from tessera.container import Services


def test_commit_returns_after_the_grouped_event_is_durable(services: Services) -> None:
    assert services.audit.committer is not None
    with services.sessions() as s:
        services.audit.record(s, "authz.decision.made", actor="idn_a")
        s.commit()
    with services.engine.connect() as conn:  # another connection sees it at once
        types = [r[0] for r in conn.execute(text("SELECT type FROM audit_events"))]
    assert types == ["authz.decision.made"]


def test_rolled_back_grouped_event_is_never_written(services: Services) -> None:
    with services.sessions() as s:
        services.audit.record(s, "authz.decision.made", actor="idn_a")
        s.rollback()
    with services.sessions() as s:
        assert services.audit.events(s) == []


def test_concurrent_callers_share_transactions_and_keep_one_chain(services: Services) -> None:
    def one(i: int) -> None:
        with services.sessions() as s:
            services.audit.record(s, "authz.decision.made", actor=f"idn_{i}")
            s.commit()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(200)))
    with services.sessions() as s:
        report = services.audit.verify(s, jwks=services.keys.jwks())
    assert report.ok and report.checked == 200


def test_no_token_leaves_when_its_event_cannot_be_committed(
        services: Services, make_identity: Callable[..., Any], monkeypatch: Any) -> None:
    from tessera.api.app import create_app

    agent = make_identity("agent-durable")
    committer = services.audit.committer
    assert committer is not None

    def broken(_session: Any, _events: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(committer, "_apply", broken)
    app = create_app(services=services, run_jobs=False)
    with TestClient(app, base_url="http://tessera.test",
                    raise_server_exceptions=False) as client:
        resp = client.post("/oauth2/token", data=agent.form())
    assert resp.status_code == 500
    assert "access_token" not in resp.text


def test_checkpoint_job_signs_only_a_moved_head(services: Services) -> None:
    services.audit.options.checkpoint_every = 0
    with services.sessions() as s:
        services.audit.record(s, "test.thing.done")
        first = services.audit.checkpoint(s)
        s.commit()
    with services.sessions() as s:
        again = services.audit.checkpoint(s)
    assert first is not None and first.seq == 1 and again is None


def test_session_closed_without_commit_forgets_its_events(services: Services) -> None:
    s = services.sessions()
    services.audit.record(s, "test.thing.done")  # joins the transaction
    services.audit.record(s, "authz.decision.made")  # waits for the commit
    s.close()
    s.commit()  # the same session object, reused: nothing stale may be written
    with services.sessions() as s2:
        assert services.audit.events(s2) == []


def test_scrub_markers_match_their_patterns() -> None:
    """The substring pre-check must name each pattern's fixed start, or a secret could slip
    past the regex it never reaches."""
    from tessera.audit.service import _SECRET_MARKERS, scrub

    for marker, pattern in _SECRET_MARKERS:
        assert pattern.pattern.startswith(marker)
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert scrub({"note": f"token {jwt_like} here"}) == {"note": "token [redacted] here"}
    assert scrub(["tsr_rt_abcdefghijkl"]) == ["[redacted]"]


def test_committer_retries_a_deadlock_victim(services: Services, monkeypatch: Any) -> None:
    """PostgreSQL may pick a committer's transaction as a deadlock victim: the batch (pure
    data, rolled back) is applied again instead of failing its requests."""
    from sqlalchemy.exc import OperationalError

    from tessera.audit.groupcommit import WriteUnit

    committer = services.audit.committer
    assert committer is not None
    real, calls = committer._apply, []

    class Deadlock(Exception):
        sqlstate = "40P01"

    def flaky(session: Any, units: Any) -> Any:
        calls.append(len(units))
        if len(calls) == 1:
            raise OperationalError("UPDATE ...", {}, Deadlock("deadlock detected"))
        return real(session, units)

    monkeypatch.setattr(committer, "_apply", flaky)
    written = committer.submit(WriteUnit(events=[services.audit.event("test.retry")])).result(30)
    assert len(calls) == 2 and written[0]["type"] == "test.retry"
    with services.sessions() as s:
        assert [e.type for e in services.audit.events(s, type="test.retry")] == ["test.retry"]


def test_usage_stamps_run_in_one_order_whatever_the_units() -> None:
    """Row locks taken in a stable order (table, row) keep committers of several workers from
    deadlocking one another."""
    from tessera.oauth.deferred import run_statements

    seen: list[str] = []

    class Recorder:
        def execute(self, _stmt: Any, params: dict[str, Any]) -> None:
            seen.append(params["row_id"])

    from tessera.identity.service import _TOUCH_IDENTITY

    run_statements(Recorder(), [(0, [(_TOUCH_IDENTITY, {"row_id": "idn_b", "now": 1})]),
                                (1, [(_TOUCH_IDENTITY, {"row_id": "idn_a", "now": 1})])])
    assert seen == ["idn_a", "idn_b"]

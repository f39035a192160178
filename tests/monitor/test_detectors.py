"""Each detector fires on the behaviour it names, explains it in one sentence, and stays
quiet on the normal pattern it learned."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tessera.monitor.baseline import Event
from tessera.monitor.engine import Monitor, MonitorConfig

T0 = 1_772_409_600.0  # 2026-03-02 00:00 UTC
DAY = 86400.0


def history(m: Monitor, who: str = "agent", days: int = 4) -> float:
    """Office hours 09-12 UTC, 2 requests a minute, one network, three resources."""
    seq = 0
    for d in range(days):
        for minute in range(9 * 60, 12 * 60):
            for k in range(2):
                seq += 1
                m.observe(Event(seq, T0 + d * DAY + minute * 60 + k * 20, "authz.decision.made",
                                who, action="read", resource=f"ds:{seq % 3}",
                                source="10.0.0.5", credential="kid-1"))
    return T0 + days * DAY + 10 * 3600  # 10:00 on the next day


def ev(ts: float, who: str = "agent", **kw: object) -> Event:
    fields: dict[str, object] = {"action": "read", "resource": "ds:1", "source": "10.0.0.5",
                                 "credential": "kid-1"}
    fields.update(kw)
    return Event(0, ts, str(fields.pop("type", "authz.decision.made")), who, **fields)  # type: ignore[arg-type]


def detectors(m: Monitor, events: list[Event]) -> list[str]:
    return [a.detector for e in events for a in m.observe(e)]


CASES: dict[str, Callable[[float], list[Event]]] = {
    "first_use": lambda t: [ev(t, resource="ds:never")],
    "rate_spike": lambda t: [ev(t + i) for i in range(30)],
    "outside_hours": lambda t: [ev(t + 12 * 3600)],
    "new_network": lambda t: [ev(t, source="203.0.113.4")],
    "denial_burst": lambda t: [ev(t + i, outcome="failure") for i in range(5)],
    "refresh_token_reuse": lambda t: [ev(t, type="oauth.refresh_token.reused")],
    "dormant_use": lambda t: [ev(t + 40 * DAY)],
    "impossible_concurrency": lambda t: [ev(t), ev(t + 5, source="10.9.9.9")],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_detector_fires_with_a_one_sentence_explanation(name: str) -> None:
    m = Monitor(MonitorConfig())
    t = history(m)
    alerts = [a for e in CASES[name](t) for a in m.observe(e)]
    mine = [a for a in alerts if a.detector == name]
    assert mine, [a.detector for a in alerts]
    summary = mine[0].summary
    assert summary.endswith(".") and summary.count(". ") == 0 and "agent" in summary


def test_normal_behaviour_raises_nothing() -> None:
    m = Monitor(MonitorConfig())
    t = history(m)
    assert detectors(m, [ev(t + i * 30, resource=f"ds:{i % 3}") for i in range(60)]) == []


def test_nothing_but_hard_evidence_during_the_learning_period() -> None:
    m = Monitor(MonitorConfig())
    history(m, days=1)
    t = T0 + DAY + 10 * 3600
    quiet = [ev(t, source="203.0.113.4", resource="ds:new", action="delete")]
    assert detectors(m, quiet) == []
    assert detectors(m, [ev(t + 1, type="oauth.refresh_token.reused", source=None)]) == \
        ["refresh_token_reuse"]


def test_network_other_identities_use_scores_lower_than_an_unknown_one() -> None:
    m = Monitor(MonitorConfig())
    t = history(m)
    history(m, who="other-agent")  # uses 10.0.0.0/24 too
    m.observe(ev(t, who="newcomer", source="10.7.7.7"))  # still learning: no alert
    known = m.observe(ev(t + 1, source="10.7.7.8"))
    unknown = m.observe(ev(t + 2, who="other-agent", source="198.51.100.1"))
    assert known[0].score < unknown[0].score


def test_repeats_are_folded_during_the_cooldown() -> None:
    m = Monitor(MonitorConfig())
    t = history(m)
    assert detectors(m, [ev(t + i, source="203.0.113.4") for i in range(10)]) == \
        ["new_network"]


def test_risk_decays_and_a_risky_identity_does_not_learn() -> None:
    m = Monitor(MonitorConfig(half_life=3600))
    t = history(m)
    m.observe(ev(t, type="oauth.refresh_token.reused"))
    assert round(m.risk.value("agent", t)) == 85
    assert round(m.risk.value("agent", t + 3600)) == 42
    m.observe(ev(t + 10, source="203.0.113.4"))
    assert "203.0.113.0/24" not in m.baselines["agent"].networks

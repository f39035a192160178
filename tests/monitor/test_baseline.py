"""Baselines: which hours of the day count as active (the OutsideHours detector's test)."""

from __future__ import annotations

from tessera.monitor.baseline import ACTIVE_SHARE, Baseline


def test_an_hour_is_active_from_its_share_of_the_events() -> None:
    b = Baseline("agent")
    b.hours = [0] * 24
    b.hours[9] = 10_000
    b.hours[3] = 20  # 20 / 10,039 is under 0.2 %
    b.hours[4] = 19
    total = sum(b.hours)
    assert ACTIVE_SHARE == 0.002
    assert [h for h in range(24) if b.hour_active(h, total)] == [9]
    b.hours[3] = 21  # 21 / 10,040 is over
    total = sum(b.hours)
    assert [h for h in range(24) if b.hour_active(h, total)] == [3, 9]


def test_no_hour_is_active_on_an_empty_baseline() -> None:
    b = Baseline("agent")
    assert not any(b.hour_active(h, sum(b.hours) or 1) for h in range(24))

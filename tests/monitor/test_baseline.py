"""Baselines: the per-hour activity test the detectors use agrees with `active_hours`."""

from __future__ import annotations

import random

import pytest

from tessera.monitor.baseline import Baseline


@pytest.mark.parametrize("seed", range(20))
def test_hour_active_is_membership_of_active_hours(seed: int) -> None:
    rng = random.Random(seed)
    b = Baseline("agent")
    # Sparse, skewed histograms, so that shares fall on both sides of the threshold.
    b.hours = [rng.choice((0, 0, 1, 2, rng.randrange(10_000))) for _ in range(24)]
    total = sum(b.hours) or 1
    assert {h for h in range(24) if b.hour_active(h, total)} == b.active_hours()


def test_hour_active_on_an_empty_baseline() -> None:
    b = Baseline("agent")
    assert not any(b.hour_active(h, sum(b.hours) or 1) for h in range(24))
    assert b.active_hours() == set()

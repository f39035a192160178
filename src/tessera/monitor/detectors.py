"""Detectors: each looks at one event against the identity's baseline and explains itself.

Every alert's summary is one sentence a person can check against the log. Scores are the
alert's contribution to the identity's risk (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tessera.audit import events as ev
from tessera.monitor.baseline import Baseline, Event, network_of

REFRESH_REUSE_TYPES = (ev.REFRESH_TOKEN_REUSED,)


@dataclass
class Finding:
    detector: str
    score: int
    summary: str
    key: str = ""  # alerts with the same detector and key are folded during the cooldown
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DetectorContext:
    trusted: bool
    learning_seconds: float
    org_networks: dict[str, int] = field(default_factory=dict)  # seen by any identity


class Detector(Protocol):
    name: str

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None: ...


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC")


class FirstUse:
    """A resource or action this identity has never used before."""

    name = "first_use"
    score = 10

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if not ctx.trusted:
            return None
        if e.action and e.action not in b.actions:
            return Finding(self.name, self.score, f"{e.identity} performed action "
                           f"'{e.action}' for the first time.", key=f"a:{e.action}",
                           data={"action": e.action})
        if e.resource and e.resource not in b.resources and len(b.resources) < 500:
            return Finding(self.name, self.score, f"{e.identity} accessed resource "
                           f"'{e.resource}' for the first time.", key=f"r:{e.resource}",
                           data={"resource": e.resource})
        return None


class RateSpike:
    """Requests this minute far above the identity's usual rate (EWMA + k * EW-MAD)."""

    name = "rate_spike"
    score = 45

    def __init__(self, k: float = 8.0, floor: float = 1.0, min_count: int = 20) -> None:
        self.k, self.floor, self.min_count = k, floor, min_count

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if not ctx.trusted:
            return None
        current = b.minute_count + 1
        h = e.hour
        mean, dev = b.rate_mean[h], b.rate_dev[h]
        limit = mean + self.k * max(dev, self.floor)
        if current >= self.min_count and current > limit:
            return Finding(self.name, self.score, f"{e.identity} made {current} requests in "
                           f"the current minute; at this hour it usually makes {mean:.1f} "
                           f"(limit {limit:.1f}).", key="rate",
                           data={"count": current, "mean": round(mean, 2),
                                 "mad": round(dev, 2), "hour": h})
        return None


class OutsideHours:
    """Activity in an hour of day in which the identity has never been active."""

    name = "outside_hours"
    score = 20
    min_history = 2 * 86400  # hours of the day mean nothing before two whole days

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if not ctx.trusted or e.ts - b.first_seen < self.min_history:
            return None
        h, total = e.hour, sum(b.hours) or 1
        if b.hour_active(h, total) or b.hour_active((h - 1) % 24, total) and \
                b.hour_active((h + 1) % 24, total):
            return None
        return Finding(self.name, self.score, f"{e.identity} was active at {_when(e.ts)}, "
                       f"outside its learned hours.", key=f"h:{e.hour}", data={"hour": e.hour})


class NewNetwork:
    """A request from a network the identity has never used (worse: one nobody has used)."""

    name = "new_network"
    score = 45
    known_score = 20

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        net = network_of(e.source)
        if not ctx.trusted or net is None or net in b.networks:
            return None
        if net in ctx.org_networks:
            return Finding(self.name, self.known_score, f"{e.identity} made a request from "
                           f"network {net}, which it has never used before (other identities "
                           "do).", key=f"n:{net}", data={"network": net, "org_known": True})
        return Finding(self.name, self.score, f"{e.identity} made a request from network "
                       f"{net}, which no identity has used before.", key=f"n:{net}",
                       data={"network": net, "org_known": False})


class DenialBurst:
    """Many denials in a short time: someone probing for permissions."""

    name = "denial_burst"
    score = 50

    def __init__(self, window: float = 60.0, count: int = 5) -> None:
        self.window, self.count = window, count

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if not e.denied:
            return None
        recent = [t for t in b.recent_denials if e.ts - t <= self.window] + [e.ts]
        b.recent_denials = recent[-50:]
        expected = b.denial_ratio * max(b.minute_count, 1) * 3
        if len(recent) >= max(self.count, expected):
            return Finding(self.name, self.score, f"{e.identity} was denied {len(recent)} "
                           f"times in {int(self.window)} seconds (its usual denial ratio is "
                           f"{b.denial_ratio:.0%}).", key="denials",
                           data={"denials": len(recent)})
        return None


class RefreshTokenReuse:
    """A refresh token was presented again after rotation: it was copied."""

    name = "refresh_token_reuse"
    score = 85

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if e.type not in REFRESH_REUSE_TYPES:
            return None
        family = e.data.get("family") or e.data.get("family_id") or ""
        return Finding(self.name, self.score, f"A rotated refresh token of {e.identity} was "
                       "used again, so a copy of it is in someone else's hands.",
                       key=f"f:{family}", data={"family": family})


class DormantUse:
    """An identity that had been idle for a long time is active again."""

    name = "dormant_use"
    score = 45

    def __init__(self, dormant_days: float = 30.0) -> None:
        self.seconds = dormant_days * 86400

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        if not b.last_seen or e.ts - b.last_seen < self.seconds:
            return None
        days = int((e.ts - b.last_seen) // 86400)
        return Finding(self.name, self.score, f"{e.identity} was used after {days} days of "
                       "inactivity.", key="dormant", data={"idle_days": days})


class ImpossibleConcurrency:
    """The same credential used from two networks within seconds of each other."""

    name = "impossible_concurrency"
    score = 60

    def __init__(self, window: float = 60.0) -> None:
        self.window = window

    def check(self, b: Baseline, e: Event, ctx: DetectorContext) -> Finding | None:
        net = network_of(e.source)
        if not e.credential or net is None:
            return None
        last = b.last_by_credential.get(e.credential)
        if not last or last[0] == net or e.ts - last[1] > self.window:
            return None
        return Finding(self.name, self.score, f"Credential {e.credential} of {e.identity} was "
                       f"used from {last[0]} and {net} within {int(e.ts - last[1])} seconds.",
                       key=f"c:{e.credential}", data={"networks": [last[0], net]})


def default_detectors() -> list[Detector]:
    return [RefreshTokenReuse(), DormantUse(), ImpossibleConcurrency(), NewNetwork(),
            DenialBurst(), RateSpike(), OutsideHours(), FirstUse()]

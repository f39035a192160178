"""The monitor's core, free of storage: events in, explained alerts and risk scores out.

`Monitor.observe(event)` runs every detector against the identity's baseline, folds repeats of
the same finding during a cooldown, raises the identity's risk, and then learns from the event
(unless the identity is already risky: a baseline must not learn an attack as normal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tessera.monitor.baseline import Baseline, Event, network_of
from tessera.monitor.detectors import (
    REFRESH_REUSE_TYPES,
    Detector,
    DetectorContext,
    Finding,
    default_detectors,
)

MONITOR_ACTOR = "tessera.monitor"
ORG = "__org__"  # the pseudo-baseline of networks seen across every identity
MAX_ORG_NETWORKS = 5000
# A refused token request names a client it did not prove to be: counting it against that
# identity would let anyone raise a victim's risk (and have it suspended).
UNATTRIBUTED = ("oauth.token.refused",)
IGNORED_PREFIXES = ("monitor.", "caep.", "audit.")  # the monitor's own events, bookkeeping


@dataclass
class MonitorConfig:
    learning_seconds: float = 3 * 86400
    min_events: int = 30
    cooldown: float = 600.0
    half_life: float = 6 * 3600
    learn_below_risk: float = 30.0
    first_use_per_cooldown: int = 5


@dataclass
class Alert:
    identity: str
    ts: float
    seq: int
    detector: str
    score: int
    summary: str
    risk: int
    risk_before: int = 0
    data: dict[str, Any] = field(default_factory=dict)


class RiskBook:
    """Risk 0-100 per identity; alerts combine like independent probabilities and decay."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self._scores: dict[str, tuple[float, float]] = {}

    def set(self, identity: str, score: float, at: float) -> None:
        self._scores[identity] = (max(0.0, min(100.0, score)), at)

    def raw(self, identity: str) -> tuple[float, float] | None:
        return self._scores.get(identity)

    def value(self, identity: str, now: float) -> float:
        entry = self._scores.get(identity)
        if entry is None:
            return 0.0
        score, at = entry
        return score * math.pow(0.5, max(0.0, now - at) / self.half_life)

    def add(self, identity: str, score: float, now: float) -> float:
        current = self.value(identity, now)
        new = 100.0 - (100.0 - current) * (1.0 - min(score, 100.0) / 100.0)
        self.set(identity, new, now)
        return new


def event_from_row(row: Any) -> Event | None:
    """The monitor's view of an event of `AuditService.read_stream`; None for events no
    identity performed."""
    type = row.type
    identity = row.subject if type in REFRESH_REUSE_TYPES else row.actor or row.subject
    if not identity or identity == MONITOR_ACTOR or type.startswith(IGNORED_PREFIXES) or \
            type in UNATTRIBUTED:
        return None
    data = row.data or {}
    # Positional: Event's field order (keywords cost twice as much, once per event).
    return Event(row.seq, row.ts.timestamp(), type, identity, row.outcome or "success",
                 row.action, row.resource, row.source,
                 data.get("kid") or data.get("credential"), data)


class Monitor:
    def __init__(self, config: MonitorConfig | None = None,
                 detectors: list[Detector] | None = None) -> None:
        self.config = config or MonitorConfig()
        self.detectors = detectors if detectors is not None else default_detectors()
        self.risk = RiskBook(self.config.half_life)
        self.baselines: dict[str, Baseline] = {}
        self.dirty: set[str] = set()
        self._last_alert: dict[tuple[str, str, str], float] = {}
        self._first_use: dict[str, list[float]] = {}

    def baseline(self, identity: str) -> Baseline:
        b = self.baselines.get(identity)
        if b is None:
            b = self.baselines[identity] = Baseline(identity)
        return b

    def _fold(self, e: Event, f: Finding) -> bool:
        """True when this finding repeats one raised within the cooldown."""
        key = (e.identity, f.detector, f.key)
        last = self._last_alert.get(key)
        if last is not None and e.ts - last < self.config.cooldown:
            return True
        if f.detector == "first_use":
            recent = [t for t in self._first_use.get(e.identity, [])
                      if e.ts - t < self.config.cooldown]
            if len(recent) >= self.config.first_use_per_cooldown:
                return True
            self._first_use[e.identity] = [*recent, e.ts]
        self._last_alert[key] = e.ts
        if len(self._last_alert) > 100_000:
            horizon = e.ts - self.config.cooldown
            self._last_alert = {k: v for k, v in self._last_alert.items() if v >= horizon}
        return False

    def observe(self, e: Event) -> list[Alert]:
        identity, ts, config = e.identity, e.ts, self.config
        b = self.baseline(identity)
        b.roll_minute(int(ts // 60))
        org = self.baseline(ORG)
        ctx = DetectorContext(b.trusted(ts, config.learning_seconds, config.min_events),
                              config.learning_seconds, org.networks)
        alerts = []
        for detector in self.detectors:
            finding = detector.check(b, e, ctx)
            if finding is None or self._fold(e, finding):
                continue
            before = self.risk.value(identity, ts)
            risk = self.risk.add(identity, finding.score, ts)
            alerts.append(Alert(identity, ts, e.seq, finding.detector, finding.score,
                                finding.summary, round(risk), round(before), finding.data))
        if self.risk.value(identity, ts) < config.learn_below_risk:
            b.learn(e)
            net = network_of(e.source)
            if net is not None and (net in org.networks or
                                    len(org.networks) < MAX_ORG_NETWORKS):
                org.networks[net] = org.networks.get(net, 0) + 1
                self.dirty.add(ORG)
        else:  # still count time and rate, so dormant/rate detectors stay correct
            b.last_seen = max(b.last_seen, ts)
            b.minute_count += 1
        self.dirty.add(identity)
        return alerts

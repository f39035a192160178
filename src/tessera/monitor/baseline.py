"""Per-identity behavioural baselines, learned incrementally from the audit event stream.

Each identity keeps: events by hour of day, resources and actions used, source networks,
request rate per minute as an EWMA with an EWMA of absolute deviations (a running MAD), token
issuances per hour (EWMA), its denial ratio, and first/last time seen. State is a plain JSON
document so it can be stored between runs and shared by nodes.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

MAX_ITEMS = 500  # resources/actions/networks remembered per identity
RATE_ALPHA = 0.02  # EWMA weight of one minute of traffic, per hour of day
MAX_GAP_MINUTES = 2 * 1440  # idle minutes fed as zeros after a gap (older ones are moot)
TOKEN_TYPES = ("oauth.token.issued",)
ACTIVE_SHARE = 0.002  # an hour of the day with at least this share of the events is active


@dataclass(slots=True)
class Event:
    """The fields of an audit event the monitor reads."""

    seq: int
    ts: float  # seconds since the epoch
    type: str
    identity: str
    outcome: str = "success"
    action: str | None = None
    resource: str | None = None
    source: str | None = None
    credential: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def denied(self) -> bool:
        return self.outcome in ("failure", "deny", "denied")

    @property
    def hour(self) -> int:
        """Hour of the day, UTC."""
        return int(self.ts // 3600) % 24


@functools.lru_cache(maxsize=65536)
def network_of(source: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) an address belongs to; None when it is not an address."""
    if not source:
        return None
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@dataclass
class Baseline:
    identity: str
    first_seen: float = 0.0
    last_seen: float = 0.0
    events: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    resources: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    networks: dict[str, int] = field(default_factory=dict)
    # Rate: the current minute's count, and EWMA/EW-MAD over completed minutes.
    minute: int = 0
    minute_count: int = 0
    rate_mean: list[float] = field(default_factory=lambda: [0.0] * 24)
    rate_dev: list[float] = field(default_factory=lambda: [0.0] * 24)
    token_hour: int = 0
    token_count: int = 0
    token_rate: float = 0.0
    denial_ratio: float = 0.0
    recent_denials: list[float] = field(default_factory=list)
    last_by_credential: dict[str, list[Any]] = field(default_factory=dict)

    def trusted(self, now: float, learning_seconds: float, min_events: int) -> bool:
        """The learning period is over: enough time and enough events."""
        return self.events >= min_events and now - self.first_seen >= learning_seconds

    def hour_active(self, hour: int, total: int) -> bool:
        """The hour of the day holds at least `ACTIVE_SHARE` of the events learnt, given
        `total = sum(hours) or 1` (the caller's, so a check of several hours sums once)."""
        return self.hours[hour] / total >= ACTIVE_SHARE

    def roll_minute(self, minute: int) -> None:
        """Close the minutes up to `minute`, feeding each (empty ones too) into the EWMA."""
        if self.minute == 0:
            self.minute = minute
            return
        gap = minute - self.minute
        if gap <= 0:
            return
        self._feed(self.minute, self.minute_count)
        # Empty minutes in between pull each hour's mean down; cap the work for long gaps.
        for m in range(max(self.minute + 1, minute - MAX_GAP_MINUTES), minute):
            self._feed(m, 0)
        self.minute, self.minute_count = minute, 0

    def _feed(self, minute: int, count: int) -> None:
        h = (minute // 60) % 24
        mean = self.rate_mean[h]
        self.rate_mean[h] = mean + RATE_ALPHA * (count - mean)
        self.rate_dev[h] += RATE_ALPHA * (abs(count - mean) - self.rate_dev[h])

    def learn(self, e: Event) -> None:
        ts = e.ts
        if not self.first_seen:
            self.first_seen = ts
        self.last_seen = max(self.last_seen, ts)
        self.events += 1
        self.hours[int(ts // 3600) % 24] += 1  # e.hour
        net = network_of(e.source)
        # Each table counts known keys and, while it is not full, new ones.
        key = e.resource
        if key is not None and (key in self.resources or len(self.resources) < MAX_ITEMS):
            self.resources[key] = self.resources.get(key, 0) + 1
        key = e.action
        if key is not None and (key in self.actions or len(self.actions) < MAX_ITEMS):
            self.actions[key] = self.actions.get(key, 0) + 1
        if net is not None and (net in self.networks or len(self.networks) < MAX_ITEMS):
            self.networks[net] = self.networks.get(net, 0) + 1
        self.minute_count += 1
        if e.type in TOKEN_TYPES:
            hour = int(ts // 3600)
            if hour != self.token_hour:
                self.token_rate += 0.1 * (self.token_count - self.token_rate)
                self.token_hour, self.token_count = hour, 0
            self.token_count += 1
        self.denial_ratio += 0.01 * ((1.0 if e.denied else 0.0) - self.denial_ratio)
        if e.credential and net:
            self.last_by_credential[e.credential] = [net, ts]
            if len(self.last_by_credential) > 20:
                oldest = min(self.last_by_credential, key=lambda k: self.last_by_credential[k][1])
                del self.last_by_credential[oldest]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        b = cls(identity=data["identity"])
        for key, value in data.items():
            if hasattr(b, key):
                setattr(b, key, value)
        return b

"""Plug-in points of the monitor: what the policy engine reads, and what a detector is."""

from __future__ import annotations

from typing import Protocol

from tessera.monitor.detectors import Detector


class RiskProvider(Protocol):
    """Current risk 0-100 of an identity; the policy engine puts it in `context.risk`."""

    def risk_of(self, identity_id: str) -> int: ...


class ApprovalProvider(Protocol):
    """Whether an automatic response requires approval for this identity's actions."""

    def requires_approval_now(self, identity_id: str) -> bool: ...


__all__ = ["ApprovalProvider", "Detector", "RiskProvider"]

"""Plug-in points of the decision point."""

from __future__ import annotations

from typing import Protocol


class RiskProvider(Protocol):
    """The current risk score (0-100) of a principal; must answer from memory, fast."""

    def score(self, principal_id: str) -> int: ...


class NoRisk:
    """The default provider: every principal scores 0."""

    def score(self, principal_id: str) -> int:
        return 0

"""Behavioural monitoring: baselines, detectors, risk scores, responses, CAEP push."""

from tessera.monitor.engine import Alert, Monitor, MonitorConfig
from tessera.monitor.ports import Detector, RiskProvider

__all__ = ["Alert", "Detector", "Monitor", "MonitorConfig", "RiskProvider"]

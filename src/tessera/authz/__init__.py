"""Policy decisions: Cedar engine, entities, policy store, obligations and AuthZEN."""

from tessera.authz.engine import Decision, EvalRequest, Snapshot
from tessera.authz.ports import NoRisk, RiskProvider
from tessera.authz.service import ADMIN_SET, DEFAULT_SET, AuthzService

__all__ = ["ADMIN_SET", "DEFAULT_SET", "AuthzService", "Decision", "EvalRequest", "NoRisk",
           "RiskProvider", "Snapshot"]

"""Audit: the append-only, hash-chained record of every authentication, decision and change."""

from tessera.audit.chain import Checkpoint, VerifyReport, verify_chain
from tessera.audit.service import AuditOptions, AuditService, EventQuery, RequestContext, scrub

__all__ = ["AuditOptions", "AuditService", "Checkpoint", "EventQuery", "RequestContext",
           "VerifyReport", "scrub", "verify_chain"]

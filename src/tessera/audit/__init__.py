"""Audit: the append-only, hash-chained record of every authentication, decision and change."""

from tessera.audit.service import AuditService, RequestContext, VerifyReport

__all__ = ["AuditService", "RequestContext", "VerifyReport"]

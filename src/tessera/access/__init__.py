"""Just-in-time access: access requests, action approvals, owner webhooks."""

from tessera.access.approvals import REF_PREFIX, ApprovalService
from tessera.access.ports import (
                                  ActionRequest,
                                  ApproverPolicy,
                                  ApproverSet,
                                  RoleApproverPolicy,
                                  RoleDefinition,
                                  Subject,
)
from tessera.access.service import AccessService
from tessera.access.webhooks import WebhookService

__all__ = ["REF_PREFIX", "AccessService", "ActionRequest", "ApprovalService", "ApproverPolicy",
           "ApproverSet", "RoleApproverPolicy", "RoleDefinition", "Subject", "WebhookService"]

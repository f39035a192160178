"""Every table, imported in one place for Alembic and for tests (db itself imports no domain)."""

from tessera.access.models import (
                                   AccessRequestRow,
                                   AccessRoleRow,
                                   ActionApprovalRow,
                                   DecisionRow,
                                   WebhookDeliveryRow,
                                   WebhookRow,
)
from tessera.audit.models import AuditCheckpointRow, AuditEventRow, AuditHeadRow, AuditRetentionRow
from tessera.authz.models import AuthzStateRow, EntityRow, PolicySetRow, PolicyVersionRow
from tessera.ca.models import CACertificateRow, IssuedCertificateRow
from tessera.db.base import Base
from tessera.db.meta import MetaRow
from tessera.federation.models import FederatedIssuerRow
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow
from tessera.jobs import JobRunRow
from tessera.keys.models import SigningKeyRow
from tessera.monitor.models import (
                                   AlertRow,
                                   BaselineRow,
                                   DeliveryRow,
                                   ResponseRow,
                                   RiskRow,
                                   StreamCursorRow,
                                   SubscriptionRow,
)
from tessera.oauth.models import (
                                   FamilyAccessTokenRow,
                                   RefreshTokenRow,
                                   RevokedTokenRow,
                                   TokenFamilyRow,
                                   UsedJTIRow,
)
from tessera.secrets.models import SecretConnectionRow, SecretLeaseRow, SecretTemplateRow

__all__ = [
    "AccessRequestRow", "AccessRoleRow", "ActionApprovalRow", "AlertRow", "AuditCheckpointRow",
    "AuditEventRow", "AuditHeadRow", "AuditRetentionRow", "AuthzStateRow", "BaselineRow", "Base",
    "CACertificateRow", "CredentialRow", "DecisionRow", "DeliveryRow", "EntityRow",
    "FederatedIssuerRow", "GrantRow", "IdentityRow", "IssuedCertificateRow", "JobRunRow",
    "MetaRow", "PolicySetRow", "PolicyVersionRow", "ResponseRow", "RiskRow",
    "SecretConnectionRow", "SecretLeaseRow", "SecretTemplateRow", "SigningKeyRow",
    "StreamCursorRow", "SubscriptionRow", "UsedJTIRow", "WebhookDeliveryRow", "WebhookRow",
    "TokenFamilyRow", "RefreshTokenRow", "FamilyAccessTokenRow", "RevokedTokenRow",
]

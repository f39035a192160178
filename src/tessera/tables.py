"""Every table, imported in one place for Alembic and for tests (db itself imports no domain)."""

from tessera.access.models import (AccessRequestRow, AccessRoleRow, ActionApprovalRow,
                                   DecisionRow, WebhookDeliveryRow, WebhookRow)
from tessera.audit.models import AuditEventRow, AuditHeadRow
from tessera.authz.models import AuthzStateRow, EntityRow, PolicySetRow, PolicyVersionRow
from tessera.ca.models import CACertificateRow, IssuedCertificateRow
from tessera.db.base import Base
from tessera.db.meta import MetaRow
from tessera.federation.models import FederatedIssuerRow
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow
from tessera.keys.models import SigningKeyRow
from tessera.jobs import JobRunRow
from tessera.oauth.models import UsedJTIRow
from tessera.secrets.models import SecretConnectionRow, SecretLeaseRow, SecretTemplateRow

__all__ = ["AuditEventRow", "AuditHeadRow", "AuthzStateRow", "EntityRow", "PolicySetRow",
           "PolicyVersionRow", "Base", "CredentialRow", "GrantRow", "IdentityRow",
           "MetaRow", "SigningKeyRow", "UsedJTIRow"]
__all__ += ["AccessRequestRow", "AccessRoleRow", "ActionApprovalRow", "DecisionRow", "JobRunRow",
            "SecretConnectionRow", "SecretLeaseRow", "SecretTemplateRow", "WebhookDeliveryRow",
            "WebhookRow"]
__all__ += ["CACertificateRow", "FederatedIssuerRow", "IssuedCertificateRow"]

"""Every table, imported in one place for Alembic and for tests (db itself imports no domain)."""

from tessera.audit.models import AuditEventRow, AuditHeadRow
from tessera.ca.models import CACertificateRow, IssuedCertificateRow
from tessera.db.base import Base
from tessera.db.meta import MetaRow
from tessera.federation.models import FederatedIssuerRow
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow
from tessera.keys.models import SigningKeyRow
from tessera.oauth.models import UsedJTIRow

__all__ = ["AuditEventRow", "AuditHeadRow", "Base", "CACertificateRow", "CredentialRow",
           "FederatedIssuerRow", "GrantRow", "IdentityRow", "IssuedCertificateRow", "MetaRow",
           "SigningKeyRow", "UsedJTIRow"]

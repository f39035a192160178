"""Every table, imported in one place for Alembic and for tests (db itself imports no domain)."""

from tessera.audit.models import AuditEventRow, AuditHeadRow
from tessera.db.base import Base
from tessera.db.meta import MetaRow
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow
from tessera.keys.models import SigningKeyRow
from tessera.oauth.models import (FamilyAccessTokenRow, RefreshTokenRow, RevokedTokenRow,
                                  TokenFamilyRow, UsedJTIRow)

__all__ = ["AuditEventRow", "AuditHeadRow", "Base", "CredentialRow", "GrantRow", "IdentityRow",
           "MetaRow", "SigningKeyRow", "UsedJTIRow",
           "TokenFamilyRow", "RefreshTokenRow", "FamilyAccessTokenRow", "RevokedTokenRow"]

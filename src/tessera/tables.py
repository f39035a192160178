"""Every table, imported in one place for Alembic and for tests (db itself imports no domain)."""

from tessera.audit.models import (AuditCheckpointRow, AuditEventRow, AuditHeadRow,
                                  AuditRetentionRow)
from tessera.db.base import Base
from tessera.db.meta import MetaRow
from tessera.identity.models import CredentialRow, GrantRow, IdentityRow
from tessera.keys.models import SigningKeyRow
from tessera.monitor.models import (AlertRow, BaselineRow, DeliveryRow, ResponseRow, RiskRow,
                                    StreamCursorRow, SubscriptionRow)
from tessera.oauth.models import UsedJTIRow

__all__ = ["AlertRow", "AuditCheckpointRow", "AuditRetentionRow", "BaselineRow",
           "DeliveryRow", "ResponseRow", "RiskRow", "StreamCursorRow", "SubscriptionRow",
           "AuditEventRow", "AuditHeadRow", "Base", "CredentialRow", "GrantRow", "IdentityRow",
           "MetaRow", "SigningKeyRow", "UsedJTIRow"]

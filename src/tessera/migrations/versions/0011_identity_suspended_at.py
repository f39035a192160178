"""identities.suspended_at: when the identity was last suspended

Revision ID: 0011_identity_suspended_at
Revises: 0008_registry_rev
Create Date: 2026-12-07 19:10:00

A suspension ends every token issued before it, for good: resuming the identity must not bring
those tokens back. The token check compares a token's `iat` with this column, which a resume
leaves in place (where `status_changed_at` moves to the resume). The suspension also changes
`status`, so the registry rev moves with it; the rev trigger is re-created with the new column
in its list all the same, so that a change of the column alone (an operator in psql) moves it.
"""
from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision = '0011_identity_suspended_at'
down_revision = '0008_registry_rev'
branch_labels = None
depends_on = None


_0008 = import_module("tessera.migrations.versions.0008_registry_rev")
# Every column whose change must invalidate cached client views (all but the usage stamps).
IDENTITY_COLUMNS = (*_0008.IDENTITY_COLUMNS, "suspended_at")


def _trigger(columns: tuple[str, ...]) -> None:
    cols = ", ".join(columns)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER trg_identities_rev ON identities")
        op.execute(f"""CREATE TRIGGER trg_identities_rev BEFORE UPDATE OF {cols} ON identities
            FOR EACH ROW EXECUTE FUNCTION tessera_identity_rev()""")
    else:
        op.execute("DROP TRIGGER trg_identities_rev")
        op.execute(f"""CREATE TRIGGER trg_identities_rev AFTER UPDATE OF {cols} ON identities
            BEGIN UPDATE identities SET rev = rev + 1 WHERE id = NEW.id; END""")


def upgrade() -> None:
    op.add_column('identities', sa.Column('suspended_at', sa.DateTime(timezone=True),
                                          nullable=True))
    _trigger(IDENTITY_COLUMNS)
    # Identities suspended before this column existed: their last status change is the
    # suspension (or a resume after it, which only moves the bound later: fail closed).
    op.execute("UPDATE identities SET suspended_at = status_changed_at "
               "WHERE status_changed_at IS NOT NULL AND status <> 'active'")


def downgrade() -> None:
    _trigger(_0008.IDENTITY_COLUMNS)
    op.drop_column('identities', 'suspended_at')

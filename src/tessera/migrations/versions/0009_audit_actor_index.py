"""audit actor index: partial, without the events whose actor is their subject

Revision ID: 0009_audit_actor_index
Revises: 0006_audit_monitor
Create Date: 2026-12-02 23:30:00

`ix_audit_events_actor` served one query, the search by identity (`subject = q OR actor = q`).
An event whose actor is also its subject (every token an agent gets for itself, the bulk of the
log) is found there through the subject index already, so the actor index now leaves such
events out: one index insert fewer per token on the audit write path. The search states the
index's condition (`actor IS DISTINCT FROM subject`), so both databases still use the index.
"""
import sqlalchemy as sa
from alembic import op

revision = '0009_audit_actor_index'
down_revision = '0006_audit_monitor'
branch_labels = None
depends_on = None


def _condition() -> sa.ColumnElement[bool]:
    return sa.column("actor").is_distinct_from(sa.column("subject"))


def upgrade() -> None:
    op.drop_index("ix_audit_events_actor", table_name="audit_events")
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"], unique=False,
                    sqlite_where=_condition(), postgresql_where=_condition())


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor", table_name="audit_events")
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"], unique=False)

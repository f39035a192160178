"""monitor cursor lease: monitor_cursors.owner and monitor_cursors.lease_until

Revision ID: 0010_monitor_cursor_lease
Revises: 0006_audit_monitor
Create Date: 2026-12-04 10:00:00

Every worker of every node runs the monitor's pass. A process whose memory is not the cursor's
last writer reloads its state (risk, baselines) from the tables, so workers taking turns
reloaded nearly every pass. The process that moves the cursor now also takes a lease on it
(`owner`, `lease_until`); the others leave the stream alone until the lease runs out. Both
columns are NULL on an existing row: nobody holds it, the next pass takes it. Like 0009, it
revises 0006, which made the table; the two are independent of each other.
"""
import sqlalchemy as sa
from alembic import op

revision = '0010_monitor_cursor_lease'
down_revision = '0006_audit_monitor'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('monitor_cursors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('monitor_cursors', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
        batch_op.drop_column('owner')

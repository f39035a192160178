"""Decision point: policy versions, active policy sets, catalog and imported entities, state.

Revision ID: 0005_authz
Revises: 0001_core
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_authz"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authz_policy_versions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("policy_set", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("schema_fragment", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("author", sa.String(200), nullable=True),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_authz_policy_versions"),
        sa.UniqueConstraint("policy_set", "version", name="uq_authz_policy_versions_set_version"),
    )
    op.create_index("ix_authz_policy_versions_policy_set", "authz_policy_versions",
                    ["policy_set"])
    op.create_table(
        "authz_policy_sets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_authz_policy_sets"),
    )
    op.create_table(
        "authz_entities",
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("eid", sa.String(256), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("attrs", sa.JSON(), nullable=False),
        sa.Column("parents", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("type", "eid", name="pk_authz_entities"),
    )
    op.create_index("ix_authz_entities_source", "authz_entities", ["source"])
    op.create_table(
        "authz_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_authz_state"),
    )
    op.execute("INSERT INTO authz_state (id, version) VALUES (1, 1)")


def downgrade() -> None:
    op.drop_table("authz_state")
    op.drop_index("ix_authz_entities_source", "authz_entities")
    op.drop_table("authz_entities")
    op.drop_table("authz_policy_sets")
    op.drop_index("ix_authz_policy_versions_policy_set", "authz_policy_versions")
    op.drop_table("authz_policy_versions")

"""key claims: one identity per public key (RFC 7638 thumbprint), for good

Revision ID: 0013_key_claims
Revises: 0001_core
Create Date: 2026-12-08 10:00:00

`key_claims` holds, per thumbprint, the identity the key belongs to; its primary key is what
keeps two nodes from both registering one key on two identities. Credentials are never
deleted, so the claim of a revoked key stays. It is filled from the existing credentials: a
thumbprint registered on several identities before this rule keeps its credentials (nothing
that works stops working), and the claim goes to its first registration (the smallest
credential id: ids are time-ordered). It reads `credentials` from 0001, hence revises it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0013_key_claims'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'key_claims',
        sa.Column('thumbprint', sa.String(length=64), nullable=False),
        sa.Column('identity_id', sa.String(length=40), nullable=False),
        sa.Column('credential_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['identity_id'], ['identities.id'],
                                name=op.f('fk_key_claims_identity_id_identities')),
        sa.PrimaryKeyConstraint('thumbprint', name=op.f('pk_key_claims')))
    op.create_index(op.f('ix_key_claims_identity_id'), 'key_claims', ['identity_id'],
                    unique=False)
    op.execute(
        "INSERT INTO key_claims (thumbprint, identity_id, credential_id, created_at) "
        "SELECT c.thumbprint, c.identity_id, c.id, c.created_at FROM credentials c "
        "WHERE c.id = (SELECT min(c2.id) FROM credentials c2 "
        "WHERE c2.thumbprint = c.thumbprint)")


def downgrade() -> None:
    op.drop_index(op.f('ix_key_claims_identity_id'), table_name='key_claims')
    op.drop_table('key_claims')

"""registry revision: identities.rev, bumped by triggers on every change a token depends on

Revision ID: 0008_registry_rev
Revises: 0003_oauth
Create Date: 2026-11-28 18:50:00

Each node caches what client authentication reads about an identity (status, expiry, scopes,
keys). `identities.rev` is that cache's validator: database triggers increment it whenever the
identity row or one of its credentials changes, whoever makes the change (Tessera, a migration,
an operator with psql). The usage stamps `identities.last_seen_at` and
`credentials.last_used_at` are left out on purpose: they are written on the token path and
change nothing a token depends on.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008_registry_rev'
down_revision = '0003_oauth'
branch_labels = None
depends_on = None

# Every column whose change must invalidate cached client views (all but the usage stamps).
IDENTITY_COLUMNS = ("id", "name", "kind", "owner_id", "purpose", "attributes", "status",
                    "allowed_scopes", "allowed_audiences", "expires_at", "created_at",
                    "updated_at", "status_changed_at", "status_changed_by", "status_reason",
                    "token_ttl", "dpop_required", "may_act_for")
CREDENTIAL_COLUMNS = ("id", "identity_id", "type", "kid", "thumbprint", "public_jwk", "status",
                      "created_at", "expires_at", "revoked_at")


def _sqlite() -> None:
    cols = ", ".join(IDENTITY_COLUMNS)
    op.execute(f"""CREATE TRIGGER trg_identities_rev AFTER UPDATE OF {cols} ON identities
        BEGIN UPDATE identities SET rev = rev + 1 WHERE id = NEW.id; END""")
    for name, when, ref in (("ins", "AFTER INSERT", "NEW"), ("del", "AFTER DELETE", "OLD")):
        op.execute(f"""CREATE TRIGGER trg_credentials_rev_{name} {when} ON credentials
            BEGIN UPDATE identities SET rev = rev + 1 WHERE id = {ref}.identity_id; END""")
    cols = ", ".join(CREDENTIAL_COLUMNS)
    op.execute(f"""CREATE TRIGGER trg_credentials_rev_upd AFTER UPDATE OF {cols} ON credentials
        BEGIN UPDATE identities SET rev = rev + 1
              WHERE id IN (NEW.identity_id, OLD.identity_id); END""")


def _postgresql() -> None:
    op.execute("""CREATE FUNCTION tessera_identity_rev() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.rev := OLD.rev + 1; RETURN NEW; END $$""")
    op.execute("""CREATE FUNCTION tessera_credential_rev() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'INSERT' THEN
            UPDATE identities SET rev = rev + 1 WHERE id = OLD.identity_id;
          END IF;
          IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.identity_id <> OLD.identity_id) THEN
            UPDATE identities SET rev = rev + 1 WHERE id = NEW.identity_id;
          END IF;
          RETURN NULL;
        END $$""")
    cols = ", ".join(IDENTITY_COLUMNS)
    op.execute(f"""CREATE TRIGGER trg_identities_rev BEFORE UPDATE OF {cols} ON identities
        FOR EACH ROW EXECUTE FUNCTION tessera_identity_rev()""")
    cols = ", ".join(CREDENTIAL_COLUMNS)
    op.execute(f"""CREATE TRIGGER trg_credentials_rev AFTER INSERT OR DELETE OR UPDATE OF {cols}
        ON credentials FOR EACH ROW EXECUTE FUNCTION tessera_credential_rev()""")


def upgrade() -> None:
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rev', sa.BigInteger(), nullable=False,
                                      server_default='0'))
    if op.get_bind().dialect.name == "postgresql":
        _postgresql()
    else:
        _sqlite()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER trg_credentials_rev ON credentials")
        op.execute("DROP TRIGGER trg_identities_rev ON identities")
        op.execute("DROP FUNCTION tessera_credential_rev()")
        op.execute("DROP FUNCTION tessera_identity_rev()")
    else:
        for name in ("trg_identities_rev", "trg_credentials_rev_ins", "trg_credentials_rev_del",
                     "trg_credentials_rev_upd"):
            op.execute(f"DROP TRIGGER {name}")
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.drop_column('rev')

"""The secret behind DPoP server nonces (RFC 9449 §8): one for every node, shared through the
database and sealed with the master key (`tessera.sealing`), so a nonce one node issues
verifies on all of them, and the database alone does not let anyone mint nonces."""

from __future__ import annotations

import secrets

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tessera.db.meta import MetaRow, get_meta, set_meta
from tessera.sealing import SecretBox

NONCE_SECRET_META = "dpop_nonce_secret.sealed"
LEGACY_NONCE_SECRET_META = "dpop_nonce_secret"  # stored in the clear by earlier versions


def load_nonce_secret(sessions: sessionmaker[Session], box: SecretBox) -> bytes:
    """The shared secret, created by the first node that needs it. In a transaction of its
    own: the request that first needs it is often refused (`use_dpop_nonce`), and its rollback
    must not take the secret with it while this node already hands out nonces. A wrong master
    key fails here, loudly (`SealError`), not with nonces that never verify on this node."""
    with sessions() as session:
        stored = get_meta(session, NONCE_SECRET_META)
        if stored is None:
            candidate = box.seal(secrets.token_hex(32))
            try:
                set_meta(session, NONCE_SECRET_META, candidate)
                session.execute(delete(MetaRow).where(MetaRow.key == LEGACY_NONCE_SECRET_META))
                session.commit()
                stored = candidate
            except IntegrityError:  # another node stored one first
                session.rollback()
                stored = get_meta(session, NONCE_SECRET_META)
    return bytes.fromhex(box.open(stored or ""))


__all__ = ["NONCE_SECRET_META", "load_nonce_secret"]

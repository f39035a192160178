"""Small secrets at rest (database passwords, webhook secrets), sealed with the Fernet master key.

The same master key protects the software KeyProvider's private keys; it comes from
TESSERA_MASTER_KEY or the data directory's master.key (see `tessera.keys.software`).
"""

from __future__ import annotations

import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SealError(Exception):
    """A sealed value could not be opened (wrong master key or damaged data)."""


class SecretBox:
    """Encrypts and decrypts short secrets; callers store only the sealed form."""

    def __init__(self, master_key: bytes) -> None:
        self._fernet = Fernet(master_key)

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, ValueError) as exc:
            raise SealError("a sealed secret cannot be decrypted with this master key") from exc


def sha256_hex(value: str) -> str:
    """Digest under which issued opaque secrets (approval references) are stored."""
    return hashlib.sha256(value.encode()).hexdigest()

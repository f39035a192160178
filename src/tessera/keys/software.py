"""Software KeyProvider: keys made by `cryptography`, private halves encrypted at rest (Fernet).

The master key comes from TESSERA_MASTER_KEY or from a generated key file (mode 0600).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tessera.keys.ports import GeneratedKey, Signer

MASTER_KEY_FILE = "master.key"


class KeyProviderError(Exception):
    """A key could not be created or loaded (message carries no key material)."""


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_secret_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `path` atomically, mode 0600 from the first byte on; refuse to overwrite an
    existing file unless `replace`.

    The bytes go to a new private file beside it (created 0600, never chmod-ed after, so no
    moment is world-readable), reach the disk, and only then take the name: a crash leaves
    either no file or a whole one, never a truncated key (a truncated master.key would lock
    every signing key away). FileExistsError if `path` exists and not `replace`.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # unlike rename, fails if `path` exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    """Make a new name in `directory` durable (where the platform allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_or_create_master_key(data_dir: Path, configured: str | None) -> bytes:
    """The Fernet key protecting private keys: configured, else read, else generated."""
    if configured:
        key = configured.encode()
    else:
        path = data_dir / MASTER_KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Two processes starting together may both get here: the first key written wins
            # and both read it.
            with contextlib.suppress(FileExistsError):
                write_secret_file(path, Fernet.generate_key())
        key = path.read_bytes().strip()
    try:
        Fernet(key)
    except (ValueError, TypeError) as exc:
        raise KeyProviderError("master key must be a url-safe base64 32-byte Fernet key") from exc
    return key


def public_jwk_of(public: Any, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        nums = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        return {"kty": "EC", "crv": "P-256", "x": _b64u(nums.x.to_bytes(size, "big")),
                "y": _b64u(nums.y.to_bytes(size, "big")), "kid": kid, "alg": alg, "use": "sig"}
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64u(raw), "kid": kid, "alg": alg,
                "use": "sig"}
    raise KeyProviderError("unsupported key type")


class SoftwareSigner:
    """Holds one decrypted private key in memory and signs with it."""

    def __init__(self, kid: str, alg: str, private: Any) -> None:
        self.kid = kid
        self.alg = alg
        self._private = private
        self._ecdsa = ec.ECDSA(hashes.SHA256())

    def sign(self, data: bytes) -> bytes:
        if self.alg == "ES256":
            # JWS wants the raw r||s form (RFC 7518 §3.4), cryptography returns DER.
            r, s = decode_dss_signature(self._private.sign(data, self._ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(self._private.sign(data))


class SoftwareKeyProvider:
    """Private keys encrypted with the master key; stored by the caller as opaque blobs."""

    name = "software"

    def __init__(self, master_key: bytes) -> None:
        self._fernet = Fernet(master_key)

    def generate(self, kid: str, alg: str) -> GeneratedKey:
        private: Any
        if alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise KeyProviderError(f"unsupported algorithm {alg}")
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return GeneratedKey(public_jwk_of(private.public_key(), kid, alg),
                            self._fernet.encrypt(pem))

    def load_signer(self, kid: str, alg: str, blob: bytes | None) -> Signer:
        if blob is None:
            raise KeyProviderError(f"key {kid} has no private part in this provider")
        try:
            pem = self._fernet.decrypt(blob)
        except InvalidToken as exc:
            raise KeyProviderError(
                f"key {kid} cannot be decrypted: wrong TESSERA_MASTER_KEY or master.key") from exc
        private = serialization.load_pem_private_key(pem, password=None)
        return SoftwareSigner(kid, alg, private)

    def destroy(self, kid: str, blob: bytes | None) -> None:
        """Nothing to do: the encrypted blob is deleted with its row."""

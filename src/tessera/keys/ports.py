"""The KeyProvider plug-in point: where private keys live and where signatures are made.

Callers never see private key material: they get a `Signer` that signs bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# JWS algorithms a provider may be asked for (RFC 7518 §3.1, RFC 8037).
SUPPORTED_ALGS = ("ES256", "EdDSA")


@dataclass(frozen=True)
class GeneratedKey:
    """A new key: its public JWK (no `d`) and an opaque blob the provider can reload it from."""

    public_jwk: dict[str, Any]
    blob: bytes | None


class Signer(Protocol):
    """Signs JWS signing input with one key; `sign` returns the JWS signature octets."""

    kid: str
    alg: str

    def sign(self, data: bytes) -> bytes: ...


class KeyProvider(Protocol):
    """Generates keys, reloads them into signers, and destroys them."""

    name: str

    def generate(self, kid: str, alg: str) -> GeneratedKey: ...

    def load_signer(self, kid: str, alg: str, blob: bytes | None) -> Signer: ...

    def destroy(self, kid: str, blob: bytes | None) -> None: ...

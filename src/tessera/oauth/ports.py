"""What the protocol modules need from storage, as Protocols (no SQLAlchemy here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass
class ClientKey:
    """One usable public key of a client, with an opaque handle for bookkeeping."""

    kid: str
    jwk: dict[str, Any]
    handle: Any = None


@dataclass
class Client:
    """An OAuth client (a Tessera identity) as the protocol code sees it."""

    client_id: str
    usable: bool
    allowed_scopes: list[str] = field(default_factory=list)
    allowed_audiences: list[str] = field(default_factory=list)
    expires_at: datetime | None = None
    handle: Any = None
    # Lifetime, sender constraint and delegation rules of the identity.
    kind: str = "agent"
    token_ttl: int | None = None
    dpop_required: bool = False
    may_act_for: list[str] = field(default_factory=list)
    spiffe_id: str | None = None
    keys: list[ClientKey] = field(default_factory=list)  # usable when the client was read


class ClientStore(Protocol):
    def find_client(self, client_id: str) -> Client | None: ...

    def client_keys(self, client: Client, kid: str | None) -> list[ClientKey]: ...


class ReplayCache(Protocol):
    def use_once(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record `jti` as used; False when it was already used (a replay)."""
        ...

"""Plug-in points of dynamic secrets: engines that create, renew and revoke credentials.

Every engine shares one lease model (`tessera.secrets.service`): a lease names the identity, the
template and the external account, and the jobs runner revokes it at expiry. A new engine
(Redis ACL users, cloud credentials) implements `SecretsEngine` and registers with
`SecretsService.register_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class EngineError(Exception):
    """The target system refused or could not be reached; the message is client-safe."""


@dataclass(frozen=True)
class ConnectionSpec:
    """How an engine reaches its target, with the admin secret already unsealed."""

    name: str
    config: dict[str, Any]
    secret: str = field(repr=False)


@dataclass(frozen=True)
class TemplateSpec:
    """What an engine creates for one lease: statements with placeholders."""

    name: str
    creation: str
    revocation: str | None = None


@dataclass(frozen=True)
class Issued:
    """A fresh external account; `password` is handed to the caller once and never stored."""

    username: str
    password: str = field(repr=False)


class SecretsEngine(Protocol):
    """One kind of target system (PostgreSQL, ...)."""

    kind: str

    def check_connection(self, conn: ConnectionSpec) -> None:
        """Raise EngineError when the admin connection does not work."""

    def check_template(self, template: TemplateSpec) -> None:
        """Raise ValueError when the template is malformed (unknown placeholders, ...)."""

    def create(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
               expires_at: datetime) -> Issued:
        """Create the account, valid until `expires_at`; return its one-time password."""

    def renew(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
              expires_at: datetime) -> None:
        """Move the account's own expiry to `expires_at`."""

    def revoke(self, conn: ConnectionSpec, template: TemplateSpec, username: str) -> None:
        """End every session of the account and remove it; idempotent."""


class IssuePolicy(Protocol):
    """May this identity obtain credentials from this template? (The PDP plugs in here.)"""

    def may_issue(self, identity_roles: list[str], identity_id: str,
                  allowed_roles: list[str]) -> bool: ...


class RoleIssuePolicy:
    """Built-in: the identity holds one of the template's allowed roles (JIT grants count)."""

    def may_issue(self, identity_roles: list[str], identity_id: str,
                  allowed_roles: list[str]) -> bool:
        return bool(set(identity_roles) & set(allowed_roles))

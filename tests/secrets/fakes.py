"""A hand-written secrets engine shared by the lease tests (no target database)."""

from __future__ import annotations

from datetime import datetime

from tessera.secrets import ConnectionSpec, EngineError, Issued, TemplateSpec


class FakeEngine:
    """Keeps accounts in a dict; can be told to fail revocations."""

    kind = "fake"

    def __init__(self) -> None:
        self.accounts: dict[str, datetime] = {}
        self.fail_revoke = False

    def check_connection(self, conn: ConnectionSpec) -> None:
        if conn.secret != "admin-secret":
            raise EngineError("bad admin secret")

    def check_template(self, template: TemplateSpec) -> None:
        if "{{name}}" not in template.creation:
            raise ValueError("needs {{name}}")

    def create(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
               expires_at: datetime) -> Issued:
        self.accounts[username] = expires_at
        return Issued(username, "pw-" + username)

    def renew(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
              expires_at: datetime) -> None:
        self.accounts[username] = expires_at

    def revoke(self, conn: ConnectionSpec, template: TemplateSpec, username: str) -> None:
        if self.fail_revoke:
            raise EngineError("target unreachable")
        self.accounts.pop(username, None)

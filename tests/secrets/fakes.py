"""A hand-written secrets engine shared by the lease tests (no target database)."""

from __future__ import annotations

from datetime import datetime

from pydantic import SecretStr

from tessera.container import Services
from tessera.secrets import ConnectionSpec, EngineError, Issued, TemplateSpec
from tessera.secrets.schemas import ConnectionCreate, TemplateCreate


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


def fake_target(services: Services, allowed_roles: list[str]) -> FakeEngine:
    """A `FakeEngine` registered, with connection `fake1` and template `t` (leases of 600 s,
    at most 1200 s) for identities holding one of `allowed_roles`."""
    engine = FakeEngine()
    services.secrets.register_engine(engine)
    with services.sessions() as s:
        conn = services.secrets.configure_connection(s, ConnectionCreate.model_construct(
            name="fake1", engine="fake", host="h", port=1, database="d", username="u",
            password=SecretStr("admin-secret"), sslmode="disable", verify=True), actor="test")
        services.secrets.define_template(s, TemplateCreate(
            name="t", connection=conn.name, creation_sql="make {{name}}", default_ttl=600,
            max_ttl=1200, allowed_roles=allowed_roles), actor="test")
        s.commit()
    return engine

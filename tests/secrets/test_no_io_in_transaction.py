"""No network I/O inside a database transaction: while a dynamic-credential target hangs,
Tessera's own database stays writable (on SQLite every transaction holds the write lock), and
the lease is already recorded as `issuing`, never `active` for an account that does not exist.

The target is a loopback TCP server that accepts and never answers, until the test lets go.
Every wait is bounded; nothing is judged by how long it took. On SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tessera.container import Services
from tessera.identity.schemas import IdentityCreate
from tessera.secrets.postgres import PostgresEngine
from tessera.secrets.schemas import ConnectionCreate, TemplateCreate

BOUND = 20.0  # seconds: generous; only reached when something is blocked


class SilentServer:
    """Accepts connections on 127.0.0.1 and never says a word, until `release`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        try:
            while True:
                client, _ = self.listener.accept()
                self.clients.append(client)
                self.accepted.set()
        except OSError:
            return  # released

    def release(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # released before
        self.listener.close()
        for client in self.clients:
            client.close()
        self._thread.join(BOUND)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.release()


@pytest.fixture
def hung_template(services: Services, silent: SilentServer,
                  make_identity: Callable[..., Any]) -> Any:
    # connect_timeout=0: libpq's "no timeout" (psycopg still stops after 130 s), so the engine
    # waits on the silent server far longer than SQLite's 30 s busy timeout.
    services.secrets.register_engine(PostgresEngine(connect_timeout=0))
    agent = make_identity("etl-bot", roles=("db-reader",))
    with services.sessions() as s:
        services.secrets.configure_connection(s, ConnectionCreate(
            name="hung", host="127.0.0.1", port=silent.port, database="db", username="admin",
            password=SecretStr("pw"), sslmode="disable", verify=False), actor="test")
        services.secrets.define_template(s, TemplateCreate(
            name="hung-read", connection="hung",
            creation_sql="CREATE ROLE {{name}} LOGIN PASSWORD {{password}};",
            default_ttl=600, max_ttl=1200, allowed_roles=["db-reader"]), actor="test")
        s.commit()
    return agent


def test_a_hung_target_blocks_no_other_writer_and_leaves_no_active_lease(
        services: Services, silent: SilentServer, hung_template: Any) -> None:
    agent = hung_template
    outcome: dict[str, Any] = {}

    def issue() -> None:
        try:
            with services.sessions() as s:
                services.secrets.issue(s, "hung-read", agent.id, actor=agent.id)
                s.commit()
            outcome["issue"] = "issued"
        except Exception as exc:  # noqa: BLE001 - reported to the test below
            outcome["issue"] = exc

    def write() -> None:
        try:
            with services.sessions() as s:
                services.identities.register(s, IdentityCreate(
                    name="bystander", kind="human"), actor="test")
                s.commit()
            outcome["write"] = "written"
        except Exception as exc:  # noqa: BLE001
            outcome["write"] = exc

    issuer = threading.Thread(target=issue, daemon=True)
    issuer.start()
    try:
        assert silent.accepted.wait(BOUND), "the engine never reached the target"
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(BOUND)
        assert outcome.get("write") == "written", outcome.get("write", "writer still blocked")
        assert issuer.is_alive()  # the target still has not answered
        with services.sessions() as s:
            leases = services.secrets.leases(s, identity_id=agent.id)
            assert [lease.status for lease in leases] == ["issuing"]
    finally:
        silent.release()
        issuer.join(BOUND)
    assert not issuer.is_alive()
    assert getattr(outcome["issue"], "code", None) == "secrets_engine_error"
    with services.sessions() as s:
        (lease,) = services.secrets.leases(s, identity_id=agent.id)
        # The create may have reached the target before the answer was lost: the job drops
        # whatever exists under this name.
        assert (lease.status, lease.revoke_reason) == ("revoking", "issue failed")
        assert lease.id in services.secrets.due(s)
        failed = services.audit.events(s, type="secrets.lease.issue_failed")
        assert [e.resource for e in failed] == [f"secrets-lease:{lease.id}"]

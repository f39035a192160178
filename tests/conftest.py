"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL: TESSERA_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test). Each
test run creates its own database and drops it at the end. When the server is unreachable the
PostgreSQL cases skip, unless TESSERA_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry
from sqlalchemy import Engine, create_engine, text
from tests.loopback import Receiver

from tessera.api.app import create_app
from tessera.clock import FakeClock
from tessera.config import Settings
from tessera.container import Services, build
from tessera.db import make_engine, migrate
from tessera.db.base import Base
from tessera.db.meta import set_meta
from tessera.identity import ADMIN_ROLE
from tessera.identity.schemas import CredentialCreate, IdentityCreate
from tessera.keys.software import SoftwareKeyProvider

PG_URL = os.environ.get("TESSERA_TEST_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("TESSERA_REQUIRE_POSTGRES") == "1"
ISSUER = "http://tessera.test"
TOKEN_ENDPOINT = f"{ISSUER}/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _admin_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    admin = create_engine(_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"tessera_t_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database with every migration applied, made once per test run."""
    path = tmp_path_factory.mktemp("template") / "tessera.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    if path.with_name("tessera.db-wal").exists():
        raise RuntimeError("template database still has a write-ahead log")
    return path


def _truncate_pg(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"),
                     {"h": "0" * 64})


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a new SQLite file, or the run's PostgreSQL database."""
    if request.param == "sqlite":
        # Copy a database migrated once per run: running every migration per test is slow.
        target = tmp_path / "tessera.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    url = request.getfixturevalue("pg_database_url")
    engine = make_engine(url)
    _truncate_pg(engine)
    engine.dispose()
    yield url


@pytest.fixture
def clock() -> FakeClock:
    # The fake clock starts at the real time: joserfc and Authlib read the wall clock.
    from datetime import datetime
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def master_key() -> bytes:
    return Fernet.generate_key()


@pytest.fixture
def settings(db_url: str, tmp_path: Path, master_key: bytes) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=db_url, issuer=ISSUER,
                    master_key=master_key.decode(), node_id="node-test")


def make_services(settings: Settings, clock: FakeClock, master_key: bytes) -> Services:
    return build(settings, clock=clock, provider=SoftwareKeyProvider(master_key),
                 trust_domain="example.org")


@pytest.fixture
def services(settings: Settings, clock: FakeClock, master_key: bytes) -> Iterator[Services]:
    svc = make_services(settings, clock, master_key)
    with svc.sessions() as s:
        set_meta(s, "trust_domain", "example.org")
        svc.keys.create(s, "ES256")
        s.commit()
    yield svc
    svc.close()


@dataclass
class Actor:
    """A registered identity with its private key, able to sign client assertions."""

    id: str
    name: str
    key: ECKey
    kid: str

    def assertion(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.id, "sub": self.id, "aud": TOKEN_ENDPOINT,
                                  "iat": now, "exp": now + 60, "jti": secrets.token_hex(8)}
        header: dict[str, Any] = {"alg": "ES256", "kid": self.kid}
        header.update(overrides.pop("_header", {}))
        header = {k: v for k, v in header.items() if v is not None}
        key = overrides.pop("_key", self.key)
        for k, v in overrides.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return jwt.encode(header, claims, key)

    def form(self, **overrides: Any) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(**overrides)}


@pytest.fixture
def make_identity(services: Services, clock: FakeClock) -> Callable[..., Actor]:
    state: dict[str, str] = {}

    def _make(name: str | None = None, kind: str = "agent", roles: tuple[str, ...] = (),
              **fields: Any) -> Actor:
        name = name or f"{kind}-{secrets.token_hex(3)}"
        key = ECKey.generate_key("P-256", private=True)
        with services.sessions() as s:
            if kind != "human" and "owner" not in fields:
                if "owner" not in state:
                    owner = services.identities.register(s, IdentityCreate(
                        name=f"owner-{secrets.token_hex(3)}", kind="human"), actor="test")
                    state["owner"] = owner.id
                fields["owner"] = state["owner"]
            if kind != "human":
                fields.setdefault("purpose", "testing")
                fields.setdefault("expires_at", clock.now() + timedelta(days=30))
            row = services.identities.register(s, IdentityCreate(name=name, kind=kind,
                                                                 **fields), actor="test")
            for role in roles:
                services.identities.grant_role(s, row.id, role, actor="test")
            cred = services.identities.add_credential(
                s, row.id, CredentialCreate(jwk=key.as_dict(private=False)), actor="test")
            s.commit()
            return Actor(row.id, name, key, cred.kid)

    return _make


@pytest.fixture
def app_client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=services, run_jobs=False),
                    base_url=ISSUER) as client:
        yield client


@pytest.fixture
def admin(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity("root", kind="human", roles=(ADMIN_ROLE,))


@pytest.fixture
def admin_headers(app_client: TestClient, admin: Actor) -> dict[str, str]:
    resp = app_client.post("/oauth2/token", data=admin.form())
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def bearer_headers(client: TestClient, actor: Actor) -> dict[str, str]:
    """Authorization headers with a fresh access token for `actor` (client_credentials)."""
    resp = client.post("/oauth2/token", data=actor.form())
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def import_key(jwk: dict[str, Any]) -> Any:
    return JWKRegistry.import_key(jwk)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback webhook receiver (see tests/loopback.py)."""
    r = Receiver()
    yield r
    r.close()

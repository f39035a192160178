"""Dynamic PostgreSQL credentials against the real server (PostgreSQL only).

The target is a fresh database with two schemas: `app` (the template grants read access) and
`private` (it grants nothing). Roles carry a per-run prefix and are dropped at the end.
The local server trusts loopback connections, so passwords are checked against the SCRAM
verifier PostgreSQL stored for the role (pg_authid) rather than by the login itself.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tessera.clock import FakeClock
from tessera.config import SecretsSettings, Settings
from tessera.container import Services, build
from tessera.errors import Refused
from tessera.keys.software import SoftwareKeyProvider
from tessera.secrets.models import SecretConnectionRow, SecretLeaseRow
from tessera.secrets.postgres import scram_matches
from tessera.secrets.schemas import ConnectionCreate, TemplateCreate

PG_URL = os.environ.get("TESSERA_TEST_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("TESSERA_REQUIRE_POSTGRES") == "1"
RUN_PREFIX = f"t{secrets.token_hex(4)}"
ADMIN_PASSWORD = "admin-pw-" + secrets.token_hex(8)
READ_ONLY = """
CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
GRANT USAGE ON SCHEMA app TO {{name}};
GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}};
"""


def _server() -> dict[str, Any]:
    info = psycopg.conninfo.conninfo_to_dict(PG_URL)
    return {"host": info.get("host", "127.0.0.1"), "port": int(info.get("port", 5432)),
            "user": info.get("user", "postgres")}


def _admin(dbname: str = "postgres") -> psycopg.Connection[Any]:
    s = _server()
    return psycopg.connect(host=s["host"], port=s["port"], user=s["user"], dbname=dbname,
                           autocommit=True)


@pytest.fixture(scope="module")
def target_db() -> Iterator[str]:
    """A database with schemas `app` and `private`, dropped with every run role afterwards."""
    name = f"{RUN_PREFIX}_target"
    try:
        admin = _admin()
    except psycopg.OperationalError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {exc}")
        pytest.skip("PostgreSQL unreachable")
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with _admin(name) as db:
        db.execute("CREATE SCHEMA app; CREATE SCHEMA private;"
                   "CREATE TABLE app.items (id int primary key, label text);"
                   "INSERT INTO app.items VALUES (1, 'one'), (2, 'two');"
                   "CREATE TABLE private.keys (id int, secret text);"
                   "INSERT INTO private.keys VALUES (1, 'nope');")
    yield name
    roles = [r[0] for r in admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                         (RUN_PREFIX + "\\_%",))]
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))
    for role in roles:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    admin.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    if not settings.db_url.startswith("postgresql"):
        pytest.skip("dynamic PostgreSQL credentials are tested with Tessera on PostgreSQL")
    return settings.model_copy(update={"secrets": SecretsSettings(role_prefix=RUN_PREFIX)})


@pytest.fixture
def setup(services: Services, target_db: str, make_identity: Callable[..., Any]
          ) -> dict[str, Any]:
    agent = make_identity("etl-bot", roles=("db-reader",))
    outsider = make_identity("stray-bot")
    s = _server()
    with services.sessions() as session:
        services.secrets.configure_connection(session, ConnectionCreate(
            name="warehouse", host=s["host"], port=s["port"], database=target_db,
            username=s["user"], password=ADMIN_PASSWORD), actor="test")
        services.secrets.define_template(session, TemplateCreate(
            name="app-read", connection="warehouse", creation_sql=READ_ONLY,
            default_ttl=3600, max_ttl=4 * 3600, allowed_roles=["db-reader"]), actor="test")
        session.commit()
    return {"agent": agent, "outsider": outsider, "db": target_db}


def issue(services: Services, identity: str, ttl: int | None = None) -> Any:
    with services.sessions() as session:
        out = services.secrets.issue(session, "app-read", identity, actor=identity, ttl=ttl)
        session.commit()
        return out.credentials


def login(creds: Any, db: str) -> psycopg.Connection[Any]:
    s = _server()
    return psycopg.connect(host=s["host"], port=s["port"], dbname=db, user=creds.username,
                           password=creds.password, autocommit=True, connect_timeout=5)


def role_row(username: str) -> tuple[Any, ...] | None:
    with _admin() as db:
        return db.execute("SELECT rolcanlogin, rolvaliduntil, rolpassword, rolsuper, "
                          "rolcreaterole, rolcreatedb FROM pg_authid WHERE rolname = %s",
                          (username,)).fetchone()


def run_lease_job(services: Services) -> None:
    services.secrets.end_all_due(services.sessions)


def test_credentials_do_exactly_what_the_template_grants(services: Services,
                                                         setup: dict) -> None:
    creds = issue(services, setup["agent"].id)
    assert creds.username.startswith(RUN_PREFIX + "_app_read_")
    canlogin, valid_until, verifier, superuser, createrole, createdb = role_row(creds.username)
    assert canlogin and not (superuser or createrole or createdb)
    assert valid_until == creds.expires_at
    assert scram_matches(creds.password, verifier)
    assert not scram_matches(creds.password + "x", verifier)
    with login(creds, setup["db"]) as db:
        assert db.execute("SELECT label FROM app.items ORDER BY id").fetchall() == \
            [("one",), ("two",)]
        for forbidden in ("INSERT INTO app.items VALUES (3, 'three')",
                          "UPDATE app.items SET label = 'x'",
                          "DELETE FROM app.items",
                          "SELECT * FROM private.keys",
                          "CREATE TABLE app.mine (id int)",
                          "CREATE TABLE public.mine (id int)",
                          "CREATE ROLE sneaky",
                          "DROP TABLE app.items"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(forbidden)


def test_passwords_are_never_stored_and_admin_password_is_sealed(services: Services,
                                                                 setup: dict) -> None:
    creds = issue(services, setup["agent"].id)
    with services.sessions() as session:
        conn = session.query(SecretConnectionRow).one()
        assert ADMIN_PASSWORD not in conn.secret_sealed and ADMIN_PASSWORD not in str(conn.config)
        lease = session.get(SecretLeaseRow, creds.lease_id)
        dump = str({c.name: getattr(lease, c.name) for c in SecretLeaseRow.__table__.columns})
        assert creds.password not in dump
        events = str([(e.data, e.reasons) for e in services.audit.events(session, limit=1000)])
        assert creds.password not in events and ADMIN_PASSWORD not in events


def test_revocation_ends_sessions_and_login(services: Services, setup: dict) -> None:
    creds = issue(services, setup["agent"].id)
    open_session = login(creds, setup["db"])
    open_session.execute("SELECT 1")
    with services.sessions() as session:
        lease = services.secrets.revoke(session, creds.lease_id, actor="test", reason="done")
        session.commit()
        assert lease.status == "revoked"
    with pytest.raises(psycopg.OperationalError):
        open_session.execute("SELECT 1")
    open_session.close()
    assert role_row(creds.username) is None
    with pytest.raises(psycopg.OperationalError):
        login(creds, setup["db"])


def test_expired_lease_is_dropped_by_the_job_even_after_a_restart(
        services: Services, setup: dict, settings: Settings, clock: FakeClock,
        master_key: bytes) -> None:
    creds = issue(services, setup["agent"].id, ttl=600)
    services.close()  # the server stops; the lease lives on in the database
    restarted = build(settings, clock=clock, provider=SoftwareKeyProvider(master_key),
                      trust_domain="example.org")
    try:
        clock.advance(599)
        run_lease_job(restarted)
        assert role_row(creds.username) is not None
        clock.advance(2)
        run_lease_job(restarted)
        assert role_row(creds.username) is None
        with pytest.raises(psycopg.OperationalError):
            login(creds, setup["db"])
        with restarted.sessions() as session:
            assert restarted.secrets.lease(session, creds.lease_id).status == "expired"
            types = [e.type for e in restarted.audit.events(session, limit=1000)]
            assert "secrets.lease.revoked" in types
    finally:
        restarted.close()


def test_renewal_within_cap_moves_valid_until_and_beyond_cap_is_refused(
        services: Services, setup: dict, clock: FakeClock) -> None:
    creds = issue(services, setup["agent"].id)
    clock.advance(1800)
    with services.sessions() as session:
        lease = services.secrets.renew(session, creds.lease_id, actor="test", increment=3600)
        session.commit()
        assert lease.expires_at == clock.now() + timedelta(seconds=3600)
    assert role_row(creds.username)[1] == clock.now() + timedelta(seconds=3600)
    clock.advance(3000)
    with services.sessions() as session:
        with pytest.raises(Refused) as info:
            services.secrets.renew(session, creds.lease_id, actor="test", increment=3 * 3600)
        session.commit()
    assert info.value.code == "renewal_beyond_cap"
    with services.sessions() as session:
        refused = services.audit.events(session, type="secrets.lease.refused")
        assert [e.reasons for e in refused] == [["renewal_beyond_cap"]]


def test_refuses_suspended_identity_unpermitted_identity_and_ttl_above_cap(
        services: Services, setup: dict) -> None:
    agent, outsider = setup["agent"], setup["outsider"]
    with services.sessions() as session:
        with pytest.raises(Refused) as info:
            services.secrets.issue(session, "app-read", outsider.id, actor=outsider.id)
        assert info.value.code == "not_permitted"
        with pytest.raises(Refused) as info:
            services.secrets.issue(session, "app-read", agent.id, actor=agent.id, ttl=5 * 3600)
        assert info.value.code == "ttl_above_cap"
        services.identities.suspend(session, agent.id, actor="test")
        session.commit()
    with services.sessions() as session:
        with pytest.raises(Refused) as info:
            services.secrets.issue(session, "app-read", agent.id, actor=agent.id)
        session.commit()
    assert info.value.code == "identity_inactive"
    with services.sessions() as session:
        assert services.secrets.leases(session) == []
        refused = [e.reasons for e in services.audit.events(session,
                                                           type="secrets.lease.refused")]
    assert refused == [["not_permitted"], ["ttl_above_cap"], ["identity_inactive"]]


def test_decommissioning_revokes_through_the_job(services: Services, setup: dict) -> None:
    creds = issue(services, setup["agent"].id)
    with services.sessions() as session:
        services.identities.decommission(session, setup["agent"].id, actor="test")
        session.commit()
        assert services.secrets.lease(session, creds.lease_id).status == "revoking"
    run_lease_job(services)
    assert role_row(creds.username) is None
    with services.sessions() as session:
        assert services.secrets.lease(session, creds.lease_id).status == "revoked"


def test_suspension_ends_open_sessions_and_login_through_the_job(services: Services,
                                                                  setup: dict) -> None:
    creds = issue(services, setup["agent"].id)
    open_session = login(creds, setup["db"])
    open_session.execute("SELECT 1")
    with services.sessions() as session:
        services.identities.suspend(session, setup["agent"].id, actor="test")
        session.commit()
        assert services.secrets.lease(session, creds.lease_id).status == "revoking"
    run_lease_job(services)
    with pytest.raises(psycopg.OperationalError):
        open_session.execute("SELECT 1")
    open_session.close()
    assert role_row(creds.username) is None
    with services.sessions() as session:
        services.identities.resume(session, setup["agent"].id, actor="test")
        session.commit()
        assert services.secrets.lease(session, creds.lease_id).status == "revoked"
    assert role_row(creds.username) is None


def test_api_issues_once_with_no_store(app_client: Any, services: Services,
                                       setup: dict) -> None:
    resp = app_client.post("/oauth2/token", data=setup["agent"].form())
    headers = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    resp = app_client.post("/v1/secrets/creds/app-read", headers=headers, json={"ttl": 900})
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["password"] and body["database"] == setup["db"]
    lease = app_client.get(f"/v1/secrets/leases/{body['lease_id']}", headers=headers).json()
    assert "password" not in lease and lease["status"] == "active"
    resp = app_client.post(f"/v1/secrets/leases/{body['lease_id']}/renew", headers=headers,
                           json={"increment": 5 * 3600})
    assert resp.status_code == 422 and resp.json()["code"] == "renewal_beyond_cap"
    resp = app_client.post(f"/v1/secrets/leases/{body['lease_id']}/revoke", headers=headers)
    assert resp.status_code == 200 and resp.json()["status"] == "revoked"
    assert role_row(body["username"]) is None

"""PostgreSQL engine: each lease is a real role with `VALID UNTIL` and only its template's grants.

Templates are SQL with three placeholders, `{{name}}`, `{{password}}` and `{{expiration}}`. They
are filled with `psycopg.sql` (an identifier, and literals), never by string formatting. The
password placeholder receives a SCRAM-SHA-256 verifier computed here, so the clear password
never reaches the server (nor its statement log): only the caller sees it, once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import string
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from tessera.secrets.ports import ConnectionSpec, EngineError, Issued, TemplateSpec

log = logging.getLogger("tessera.secrets.postgres")

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
KNOWN = {"name", "password", "expiration"}
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32
SCRAM_ITERATIONS = 4096
DEFAULT_CREATION = ("CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} "
                    "VALID UNTIL {{expiration}};")


def generate_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def scram_sha256_verifier(password: str, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """The verifier PostgreSQL stores for `password` (RFC 7677 / RFC 5802 §3)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def scram_matches(password: str, verifier: str) -> bool:
    """Does `password` produce `verifier` (as stored in pg_authid.rolpassword)?"""
    try:
        _, rest = verifier.split("$", 1)
        iter_salt, _keys = rest.split("$", 1)
        iterations, salt = iter_salt.split(":", 1)
        expected = scram_sha256_verifier(password, base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, verifier)


def render(template: str, values: dict[str, sql.Composable]) -> sql.Composed:
    """Fill the placeholders of `template` with safely quoted SQL pieces."""
    parts: list[sql.Composable] = []
    pos = 0
    for match in PLACEHOLDER.finditer(template):
        key = match.group(1)
        if key not in values:
            raise ValueError(f"unknown placeholder {{{{{key}}}}}")
        parts.append(sql.SQL(template[pos:match.start()]))
        parts.append(values[key])
        pos = match.end()
    parts.append(sql.SQL(template[pos:]))
    return sql.Composed(parts)


class PostgresEngine:
    """Creates, renews and drops login roles on a PostgreSQL server."""

    kind = "postgresql"

    def __init__(self, connect_timeout: int = 10) -> None:
        self._timeout = connect_timeout

    def _connect(self, conn: ConnectionSpec) -> psycopg.Connection[Any]:
        cfg = conn.config
        try:
            return psycopg.connect(host=cfg["host"], port=int(cfg.get("port", 5432)),
                                   dbname=cfg["database"], user=cfg["username"],
                                   password=conn.secret or None,
                                   sslmode=cfg.get("sslmode", "prefer"),
                                   connect_timeout=self._timeout,
                                   application_name="tessera-secrets")
        except psycopg.Error as exc:
            log.warning("cannot connect to %s (%s)", conn.name, type(exc).__name__)
            raise EngineError(f"cannot connect to the database of connection {conn.name!r}"
                              ) from None

    def check_connection(self, conn: ConnectionSpec) -> None:
        with self._connect(conn) as db:
            db.execute("SELECT 1")

    def check_template(self, template: TemplateSpec) -> None:
        found = set(PLACEHOLDER.findall(template.creation))
        unknown = found - KNOWN
        if unknown:
            raise ValueError(f"unknown placeholders: {', '.join(sorted(unknown))}")
        if not {"name", "password"} <= found:
            raise ValueError("the creation SQL must use {{name}} and {{password}}")
        if template.revocation:
            unknown = set(PLACEHOLDER.findall(template.revocation)) - {"name"}
            if unknown:
                raise ValueError("the revocation SQL may only use {{name}}")

    def create(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
               expires_at: datetime) -> Issued:
        password = generate_password()
        statement = render(template.creation, {
            "name": sql.Identifier(username),
            "password": sql.Literal(scram_sha256_verifier(password)),
            "expiration": sql.Literal(expires_at.isoformat())})
        with self._connect(conn) as db:
            try:
                db.execute(statement)
                db.commit()
            except psycopg.Error as exc:
                db.rollback()
                log.warning("creating role %s failed: %s", username,
                            getattr(exc, "sqlstate", None) or type(exc).__name__)
                raise EngineError("the database refused to create the credentials") from None
        return Issued(username=username, password=password)

    def renew(self, conn: ConnectionSpec, template: TemplateSpec, username: str,
              expires_at: datetime) -> None:
        with self._connect(conn) as db:
            try:
                db.execute(sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(
                    sql.Identifier(username), sql.Literal(expires_at.isoformat())))
                db.commit()
            except psycopg.Error as exc:
                db.rollback()
                log.warning("renewing role %s failed: %s", username,
                            getattr(exc, "sqlstate", None) or type(exc).__name__)
                raise EngineError("the database refused to renew the credentials") from None

    def revoke(self, conn: ConnectionSpec, template: TemplateSpec, username: str) -> None:
        role = sql.Identifier(username)
        with self._connect(conn) as db:
            try:
                exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (username,)).fetchone()
                if exists is None:
                    return
                # New sessions first, then the ones already open, then the role itself.
                db.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                db.commit()
                db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE usename = %s AND pid <> pg_backend_pid()", (username,))
                if template.revocation:
                    db.execute(render(template.revocation, {"name": role}))
                db.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role))
                db.execute(sql.SQL("DROP OWNED BY {}").format(role))
                db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
                db.commit()
            except psycopg.Error as exc:
                db.rollback()
                log.warning("revoking role %s failed: %s", username,
                            getattr(exc, "sqlstate", None) or type(exc).__name__)
                raise EngineError("the database refused to drop the credentials") from None

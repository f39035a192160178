"""Engine and session factory for SQLite (default, WAL) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and select the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


READONLY = "tessera_readonly"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory ones."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):
        return None  # a URI filename: SQLite interprets it, not us
    return Path(parsed.database)


def _create_private(path: Path) -> None:
    """Create an empty database file 0600 if there is none: SQLite would create it 0644 (less
    the umask), and its -wal and -shm files take the database file's mode."""
    if path.parent.is_dir():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = sqlite_path(url)
        if database is not None:
            _create_private(database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # Checkpoint the WAL every ~32 MB instead of every 4 MB: the audit chain head and
            # the index pages every commit touches are copied back once per checkpoint, not
            # once per version, which makes each commit ~12 % cheaper (bench/token_path.py).
            cur.execute("PRAGMA wal_autocheckpoint=8000")
            cur.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL past 64 MB
            # Temporary tables and indices in memory: under load the audit committer's
            # statements had SQLite create, write and unlink a file in /var/tmp ~40 times a
            # second (strace); large sorts (exports, index builds) now use RAM instead.
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN
        # instead, so read-then-write transactions (the audit chain) serialise cleanly.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Read-only work (key and cache refreshes) must not queue behind writers.
            readonly = conn.get_execution_options().get(READONLY, False)
            # On the driver connection directly: through exec_driver_sql, SQLAlchemy's
            # execution machinery costs several times the statement, on every transaction.
            # Its errors are wrapped as exec_driver_sql would ("database is locked" must stay
            # a retryable sqlalchemy.exc.OperationalError for the audit committer).
            statement = "BEGIN" if readonly else "BEGIN IMMEDIATE"
            try:
                conn.connection.driver_connection.execute(statement)
            except sqlite3.Error as exc:
                raise DBAPIError.instance(statement, (), exc, sqlite3.Error) from exc

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; readonly ones take no write lock on SQLite."""
    bind = engine.execution_options(**{READONLY: True}) if readonly else engine
    return sessionmaker(bind, expire_on_commit=False)

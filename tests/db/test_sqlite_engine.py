"""The SQLite engine's connection settings (tessera.db.engine.make_engine)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tessera.db import make_engine


def test_sqlite_connections_are_set_for_the_audit_write_path(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tessera.db'}")
    try:
        with engine.connect() as conn:
            pragma = {name: conn.execute(text(f"PRAGMA {name}")).scalar()
                      for name in ("journal_mode", "synchronous", "foreign_keys",
                                   "wal_autocheckpoint", "journal_size_limit", "temp_store")}
    finally:
        engine.dispose()
    # synchronous 1 = NORMAL; temp_store 2 = MEMORY (no temporary file per committer batch)
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1,
                      "wal_autocheckpoint": 8000, "journal_size_limit": 67108864,
                      "temp_store": 2}


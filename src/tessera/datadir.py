"""The data directory's permissions: 0700 for it, 0600 for the files that hold secrets.

It holds the SQLite database (identities, sealed secrets, the audit log), `master.key` (which
decrypts every private signing key) and the bootstrap admin's private key: another local user
who can read any of them can sign as Tessera or as its administrator. Files Tessera creates
there are created private from the first byte (`tessera.keys.software.write_secret_file`, and
`tessera.db.engine.make_engine` for the database file, whose -wal and -shm files SQLite creates
with the database's own mode). What existed before - a directory made by hand 0755, a database
copied in 0644 - is tightened by `tessera init` and at every `tessera serve` start, which say
so.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# Relative to the data directory. The database's files are added by the caller (its path can
# be elsewhere: TESSERA_DATABASE_URL=sqlite:///...).
PRIVATE_FILES = ("master.key", "admin-key.jwk", "tls/server-key.pem")
PRIVATE_DIRS = ("tls",)


def sqlite_files(database: Path) -> list[Path]:
    """A SQLite database file and the write-ahead log and shared-memory files beside it."""
    return [database, database.with_name(database.name + "-wal"),
            database.with_name(database.name + "-shm")]


def secure(data_dir: Path, database: Path | None = None, *, create: bool = False) -> list[str]:
    """Create `data_dir` 0700 (with `create`), or take group and other permissions off it, its
    private files and the SQLite `database` files; one line per change (or failure to)."""
    changes: list[str] = []
    if not data_dir.exists():
        if not create:
            return changes
        # The mode applies to the last component; umask can only narrow it.
        data_dir.mkdir(parents=True, mode=DIR_MODE)
    _tighten(data_dir, DIR_MODE, changes)
    for name in PRIVATE_DIRS:
        _tighten(data_dir / name, DIR_MODE, changes)
    files = [data_dir / name for name in PRIVATE_FILES]
    if database is not None:
        files += sqlite_files(database)
    for path in files:
        _tighten(path, FILE_MODE, changes)
    return changes


def _tighten(path: Path, mode: int, changes: list[str]) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not current & 0o077:
        return  # no access for group or others already (0600, 0400, 0700...)
    try:
        os.chmod(path, mode)
    except OSError as exc:
        changes.append(f"{path} is mode {current:04o}, readable by others, and could not be "
                       f"changed to {mode:04o}: {exc.strerror}")
        return
    changes.append(f"tightened {path} from mode {current:04o} to {mode:04o}")


__all__ = ["secure", "sqlite_files"]

"""The data directory is 0700 and its secrets 0600, whether Tessera created them or found them
looser (tessera.datadir, tessera.keys.software.write_secret_file, tessera.db.engine)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tessera.bootstrap import init
from tessera.config import Settings
from tessera.datadir import secure
from tessera.db import make_engine
from tessera.keys.software import load_or_create_master_key, write_secret_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain create is world-readable (0644, 0755)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_init_creates_the_directory_0700_and_every_secret_0600(tmp_path: Path,
                                                               umask_022: None) -> None:
    data = tmp_path / "data"
    report = init(Settings(data_dir=data))
    assert report.tightened == []
    assert mode(data) == 0o700
    for name in ("tessera.db", "master.key", "admin-key.jwk"):
        assert mode(data / name) == 0o600, name
    # SQLite creates the -wal and -shm files with the database file's mode.
    engine = make_engine(f"sqlite:///{data / 'tessera.db'}")
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            conn.commit()
            for suffix in ("-wal", "-shm"):
                assert mode(data / f"tessera.db{suffix}") == 0o600, suffix
    finally:
        engine.dispose()


def test_init_tightens_a_loose_directory_and_loose_files_it_finds(tmp_path: Path,
                                                                  umask_022: None) -> None:
    data = tmp_path / "data"
    init(Settings(data_dir=data))
    os.chmod(data, 0o755)
    for name in ("tessera.db", "master.key", "admin-key.jwk"):
        os.chmod(data / name, 0o644)
    (data / "tessera.db-wal").touch(mode=0o644)  # left by a copy, say
    report = init(Settings(data_dir=data))
    assert mode(data) == 0o700
    for name in ("tessera.db", "master.key", "admin-key.jwk"):
        assert mode(data / name) == 0o600, name
    # (SQLite removes the -wal file once it is checkpointed at the end of `init`.)
    assert f"tightened {data / 'tessera.db-wal'} from mode 0644 to 0600" in report.tightened
    assert len(report.tightened) == 5
    assert any("from mode 0755 to 0700" in line for line in report.tightened)


def test_init_tightens_a_pre_existing_empty_0755_directory(tmp_path: Path,
                                                           umask_022: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    report = init(Settings(data_dir=data))
    assert mode(data) == 0o700
    assert report.tightened == [f"tightened {data} from mode 0755 to 0700"]


def test_secure_leaves_stricter_modes_and_missing_files_alone(tmp_path: Path) -> None:
    (tmp_path / "master.key").touch(mode=0o400)
    os.chmod(tmp_path, 0o700)
    assert secure(tmp_path, tmp_path / "tessera.db") == []
    assert mode(tmp_path / "master.key") == 0o400
    assert secure(tmp_path / "absent") == [] and not (tmp_path / "absent").exists()


def test_master_key_directory_is_created_0700(tmp_path: Path, umask_022: None) -> None:
    load_or_create_master_key(tmp_path / "keys", None)
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "master.key") == 0o600


def test_a_new_sqlite_database_is_0600(tmp_path: Path, umask_022: None) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.commit()
            for name in ("x.db", "x.db-wal", "x.db-shm"):
                assert mode(tmp_path / name) == 0o600, name
    finally:
        engine.dispose()


class TestWriteSecretFile:
    def test_creates_0600_even_under_umask_0_without_chmod(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def no_chmod(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("created with a wider mode and chmod-ed after")

        monkeypatch.setattr(os, "chmod", no_chmod)
        monkeypatch.setattr(os, "fchmod", no_chmod)
        old = os.umask(0)
        try:
            write_secret_file(tmp_path / "k", b"secret")
        finally:
            os.umask(old)
        assert mode(tmp_path / "k") == 0o600
        assert (tmp_path / "k").read_bytes() == b"secret"
        assert os.listdir(tmp_path) == ["k"]  # no temporary file left

    def test_refuses_to_overwrite_and_keeps_the_old_content(self, tmp_path: Path) -> None:
        write_secret_file(tmp_path / "k", b"first")
        with pytest.raises(FileExistsError):
            write_secret_file(tmp_path / "k", b"second")
        assert (tmp_path / "k").read_bytes() == b"first"
        assert os.listdir(tmp_path) == ["k"]
        write_secret_file(tmp_path / "k", b"second", replace=True)
        assert (tmp_path / "k").read_bytes() == b"second" and mode(tmp_path / "k") == 0o600

    def test_a_failed_write_leaves_no_partial_key(self, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = os.write
        calls = []

        def short_then_fail(fd: int, data: bytes) -> int:
            calls.append(len(data))
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            return real_write(fd, bytes(data)[:3])

        monkeypatch.setattr(os, "write", short_then_fail)
        with pytest.raises(OSError):
            write_secret_file(tmp_path / "k", b"0123456789")
        assert os.listdir(tmp_path) == []

"""Apply and check Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import tessera

MIGRATIONS = Path(tessera.__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the database to every head (domain packages may add their own branches)."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


def pending(engine: Engine) -> set[str]:
    """Heads of the migration scripts the database has not reached; empty when current."""
    script = ScriptDirectory.from_config(_config())
    heads = set(script.get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    reached: set[str] = set()
    for rev in current:
        reached |= {r.revision for r in script.iterate_revisions(rev, "base")}
    return heads - reached


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new revision against `engine` (developer helper)."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)

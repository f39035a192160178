"""Alembic environment: runs on the connection handed in by tessera.db.migrate."""

from alembic import context

import tessera.tables  # noqa: F401  (registers every table on Base.metadata)
from tessera.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("run migrations through `tessera init` or tessera.db.migrate")

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

"""Core statements run on the driver's cursor: compiled once, encoded by SQLAlchemy's types.

Written by hand because no library offers it: SQLAlchemy's execution path (execution context,
events, result wrapping) costs ~40 us of CPU per statement on SQLite and ~100 us on PostgreSQL,
several times what the driver itself spends. The audit committer runs the same three statements
for every batch (lock the chain head, insert the events, move the head), so for them this module
compiles the statement once per dialect and executes it on the DBAPI cursor of the session's own
connection (same transaction), converting each parameter with the bind processor SQLAlchemy
would use for its column type: what lands in the database is byte for byte what Core writes.

Only for statements whose results need no type processing (integers and strings back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

Processor = Callable[[Any], Any] | None


class _Compiled:
    def __init__(self, stmt: Any, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        self.names: list[str] = list(compiled.positiontup or []) if self.positional \
            else list(compiled.binds)
        self.fixed: dict[str, Any] = {name: bind.value for name, bind in compiled.binds.items()
                                      if bind.value is not None and not bind.required}
        self.processors: dict[str, Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()}

    def params(self, values: dict[str, Any]) -> Any:
        out = {}
        for name in self.names:
            value = values[name] if name in values else self.fixed.get(name)
            proc = self.processors.get(name)
            out[name] = proc(value) if proc is not None and value is not None else value
        return tuple(out[n] for n in self.names) if self.positional else out


class FastStatement:
    """`run(session, params)` / `run_many(session, rows)` for one Core statement."""

    def __init__(self, stmt: Executable) -> None:
        self._stmt = stmt
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, session: Session) -> tuple[_Compiled, Any]:
        conn = session.connection()  # begins the session's transaction if needed
        dialect = conn.dialect
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = _Compiled(self._stmt, dialect)
        return compiled, conn.connection.driver_connection

    def run(self, session: Session, params: dict[str, Any] | None = None
            ) -> list[Sequence[Any]]:
        compiled, raw = self._compiled(session)
        cur = raw.cursor()
        try:
            cur.execute(compiled.sql, compiled.params(params or {}))
            return list(cur.fetchall()) if cur.description is not None else []
        finally:
            cur.close()

    def run_many(self, session: Session, rows: list[dict[str, Any]]) -> None:
        compiled, raw = self._compiled(session)
        cur = raw.cursor()
        try:
            cur.executemany(compiled.sql, [compiled.params(r) for r in rows])
        finally:
            cur.close()


__all__ = ["FastStatement"]

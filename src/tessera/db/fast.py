"""Core statements run on the driver's cursor: compiled once, encoded by SQLAlchemy's types.

Written by hand because no library offers it: SQLAlchemy's execution path (execution context,
events, result wrapping) costs ~40 us of CPU per statement on SQLite and ~100 us on PostgreSQL,
several times what the driver itself spends. The audit committer runs the same three statements
for every batch (lock the chain head, insert the events, move the head), so for them this module
compiles the statement once per dialect and executes it on the DBAPI cursor of the session's own
connection (same transaction), converting each parameter with the bind processor SQLAlchemy
would use for its column type: what lands in the database is byte for byte what Core writes,
except for the parameters a statement names `encoded`, which its caller encodes itself.

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
    def __init__(self, stmt: Any, dialect: Dialect, encoded: frozenset[str]) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        names: list[str] = list(compiled.positiontup or []) if self.positional \
            else list(compiled.binds)
        fixed = {name: bind.value for name, bind in compiled.binds.items()
                 if bind.value is not None and not bind.required}
        processors: dict[str, Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items() if name not in encoded}
        # Per parameter, in order: (name, value when the caller gives none, processor).
        self._plan = [(name, fixed.get(name), processors.get(name)) for name in names]
        self._names = names

    def params(self, values: dict[str, Any]) -> Any:
        out = []
        for name, default, proc in self._plan:
            value = values.get(name, default)
            out.append(proc(value) if proc is not None and value is not None else value)
        return tuple(out) if self.positional else dict(zip(self._names, out))


class FastStatement:
    """`run(session, params)` / `run_many(session, rows)` for one Core statement.

    Parameters named in `encoded` skip their type's bind processor: the caller passes them as
    the driver takes them (e.g. a JSON column's text, which the statement's SQL still casts
    where the dialect renders a cast)."""

    def __init__(self, stmt: Executable, *, encoded: tuple[str, ...] = ()) -> None:
        self._stmt = stmt
        self._encoded = frozenset(encoded)
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, session: Session) -> tuple[_Compiled, Any]:
        conn = session.connection()  # begins the session's transaction if needed
        dialect = conn.dialect
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = _Compiled(self._stmt, dialect,
                                                                 self._encoded)
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


class FastRowsStatement:
    """A statement over `n` rows (a multi-row VALUES, an IN list), built by `build(n)` and
    compiled once per dialect and row count: `run(session, rows)` binds row i's values to the
    parameters named `<column>_<i>`. Row counts up to `max_rows`; more run in chunks."""

    def __init__(self, build: Callable[[int], Executable], max_rows: int = 256) -> None:
        self._build = build
        self._max = max_rows
        self._by_count: dict[int, FastStatement] = {}

    def run(self, session: Session, rows: list[dict[str, Any]]) -> list[Sequence[Any]]:
        out: list[Sequence[Any]] = []
        for start in range(0, len(rows), self._max):
            chunk = rows[start:start + self._max]
            stmt = self._by_count.get(len(chunk))
            if stmt is None:
                stmt = self._by_count[len(chunk)] = FastStatement(self._build(len(chunk)))
            out.extend(stmt.run(session, {f"{name}_{i}": value for i, row in enumerate(chunk)
                                          for name, value in row.items()}))
        return out


__all__ = ["FastRowsStatement", "FastStatement"]

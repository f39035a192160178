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

`send` executes without reading the result, and `Sent.rows()` reads it: on a PostgreSQL
connection in pipeline mode (`tessera.db.pipeline`) several statements sent one after the other
then cost one round trip to the server between them, not one each; elsewhere `send` runs the
statement at once and `rows()` only reads what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
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
        # From the statement, not from the cursor's description: in pipeline mode that is
        # only known once the result has arrived. (A textual statement returning rows says so
        # with `text(...).columns(...)`.)
        self.returns_rows = bool(getattr(stmt, "is_select", False) or
                                 getattr(compiled, "effective_returning", None))

    def params(self, values: dict[str, Any]) -> Any:
        out = []
        for name, default, proc in self._plan:
            value = values.get(name, default)
            out.append(proc(value) if proc is not None and value is not None else value)
        return tuple(out) if self.positional else dict(zip(self._names, out))


# Key, in a Session's `info`, of the SQLAlchemy Connection its statements run on directly: set
# by `tessera.db.pipeline` for a pipelined batch, whose implicit transaction needs no
# SQLAlchemy-level begin (asking the Session for its connection costs ~10 us a statement, and
# then a Session commit ~40 us a batch, a measurable share of a small batch's CPU).
DIRECT = "tessera_fast_direct"
# Key of the driver cursors kept in a pooled connection's `info` (it lasts as long as the
# driver connection, and is cleared when that is replaced): one per statement, reused.
_CURSORS = "tessera_fast_cursors"


class Sent:
    """A statement sent on a driver cursor; `rows()` reads its result (once) and hands the
    cursor back for the statement's next run. Read every `Sent` before its transaction ends:
    SQLite cannot commit while a statement's result is unread."""

    __slots__ = ("_cur", "_key", "_pool", "_returns_rows")

    def __init__(self, cur: Any, returns_rows: bool, pool: dict[Any, Any], key: Any) -> None:
        self._cur = cur
        self._returns_rows = returns_rows
        self._pool = pool
        self._key = key

    def rows(self) -> list[Sequence[Any]]:
        try:
            rows = list(self._cur.fetchall()) if self._returns_rows else []
        except BaseException:
            self._cur.close()
            raise
        self._pool[self._key] = self._cur
        return rows


class FastStatement:
    """`run(session, params)` / `send(session, params)` / `run_many(session, rows)` for one
    Core statement.

    Parameters named in `encoded` skip their type's bind processor: the caller passes them as
    the driver takes them (e.g. a JSON column's text, which the statement's SQL still casts
    where the dialect renders a cast)."""

    def __init__(self, stmt: Executable, *, encoded: tuple[str, ...] = ()) -> None:
        self._stmt = stmt
        self._encoded = frozenset(encoded)
        self._by_dialect: dict[str, _Compiled] = {}

    def _cursor(self, session: Session) -> tuple[_Compiled, Any, dict[Any, Any]]:
        """The statement compiled for the session's dialect, a driver cursor of the session's
        connection (taken from its pool: a new psycopg cursor costs ~20 us), and that pool."""
        conn = session.info.get(DIRECT) or session.connection()  # (begins the session's
        # transaction if needed)
        compiled = self._by_dialect.get(conn.dialect.name)
        if compiled is None:
            compiled = self._by_dialect[conn.dialect.name] = _Compiled(
                self._stmt, conn.dialect, self._encoded)
        fairy = conn.connection
        pool = fairy.info.get(_CURSORS)
        if pool is None:
            pool = fairy.info[_CURSORS] = {}
        cur = pool.pop(self, None)
        if cur is None:
            driver = fairy.driver_connection
            assert driver is not None  # a checked-out connection always has its driver's
            cur = driver.cursor()
        return compiled, cur, pool

    def send(self, session: Session, params: dict[str, Any] | None = None) -> Sent:
        compiled, cur, pool = self._cursor(session)
        try:
            cur.execute(compiled.sql, compiled.params(params or {}))
        except BaseException:
            cur.close()
            raise
        return Sent(cur, compiled.returns_rows, pool, self)

    def run(self, session: Session, params: dict[str, Any] | None = None
            ) -> list[Sequence[Any]]:
        return self.send(session, params).rows()

    def run_many(self, session: Session, rows: list[dict[str, Any]]) -> None:
        compiled, cur, pool = self._cursor(session)
        try:
            cur.executemany(compiled.sql, [compiled.params(r) for r in rows])
        except BaseException:
            cur.close()
            raise
        pool[self] = cur


class FastRowsStatement:
    """A statement over `n` rows (a multi-row VALUES, an IN list), built by `build(n)` and
    compiled once per dialect and row count: `run(session, rows)` binds row i's values to the
    parameters named `<column>_<i>`. Row counts up to `max_rows`; more run in chunks."""

    def __init__(self, build: Callable[[int], Executable], max_rows: int = 256) -> None:
        self._build = build
        self._max = max_rows
        self._by_count: dict[int, FastStatement] = {}

    def send(self, session: Session, rows: list[dict[str, Any]]) -> list[Sent]:
        sent = []
        for start in range(0, len(rows), self._max):
            chunk = rows[start:start + self._max]
            stmt = self._by_count.get(len(chunk))
            if stmt is None:
                stmt = self._by_count[len(chunk)] = FastStatement(self._build(len(chunk)))
            sent.append(stmt.send(session, {f"{name}_{i}": value
                                            for i, row in enumerate(chunk)
                                            for name, value in row.items()}))
        return sent

    def run(self, session: Session, rows: list[dict[str, Any]]) -> list[Sequence[Any]]:
        return [row for sent in self.send(session, rows) for row in sent.rows()]


class JsonbRows:
    """PostgreSQL: `SELECT <columns> FROM` a jsonb array of rows bound to `:param` (`sql`),
    and that parameter made from rows of values in `columns`' order (`param`).

    For statements over many rows: psycopg's CPU per bound parameter, and per distinct
    statement shape, dominates such statements on the client (a multi-row VALUES has both:
    16 parameters a row, one shape per row count). One jsonb parameter is one shape, parsed
    once by PostgreSQL. Strings stay text: the column's assignment cast refuses one too long,
    where a CAST to VARCHAR(n) would cut it short without a word; other values are cast to
    their column's type. A text column must get a string (or None): `->>` would turn a number
    into its digits, where a bound parameter of the wrong type is refused. Datetimes must be
    timezone-aware (`aware`): written in RFC 3339, a naive one would be read in the server's
    time zone."""

    def __init__(self, table: Any, columns: list[str], param: str = "rows") -> None:
        from sqlalchemy.dialects import postgresql

        dialect = postgresql.dialect()
        self._text = [(i, name) for i, name in enumerate(columns)
                      if is_string(table.c[name].type)]
        text = {i for i, _ in self._text}
        values = ", ".join(
            f"r.value ->> {i}" if i in text else
            f"CAST(r.value ->> {i} AS {table.c[name].type.compile(dialect=dialect)})"
            for i, name in enumerate(columns))
        self.sql = f"SELECT {values} FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS r"

    def param(self, rows: list[list[Any]]) -> str:
        for row in rows:
            for i, name in self._text:
                if row[i] is not None and type(row[i]) is not str:
                    raise TypeError(f"{name} must be a string")
        return orjson.dumps(rows).decode()


def is_string(type_: Any) -> bool:
    """Whether a column type stores text (a TypeDecorator by what it decorates)."""
    from sqlalchemy import String, TypeDecorator

    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return isinstance(type_, String)


def json_array(values: list[Any]) -> str:
    """A JSON array parameter (e.g. for `jsonb_array_elements_text`)."""
    return orjson.dumps(values).decode()


def aware(value: datetime) -> datetime:
    """`value`, refused if naive (as the UTC columns' type refuses it)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value


__all__ = ["FastRowsStatement", "FastStatement", "JsonbRows", "Sent", "aware", "is_string",
           "json_array"]

"""Say when a committed transaction touched some tables: the hook per-node caches use to drop
what they remember as soon as this node changes it (other nodes rely on the cache's bound).

ORM changes (objects added, changed or deleted) and Core/ORM-enabled DML statements run
through a watched session (`session.execute(update(T)...)`) both count. The callback runs after
the commit, so a cache refilled from the database afterwards sees the new state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

# Execution option of statements that only record use (last_seen_at, last_used_at): they change
# nothing a cache holds, and they run on every token path, so they never count as a change.
USAGE_STAMP = "tessera_usage_stamp"


def on_commit_touching(sessions: sessionmaker[Session], models: Iterable[type],
                       callback: Callable[[], None]) -> None:
    """Call `callback()` after each commit (through `sessions`) that wrote one of `models`."""
    classes = tuple(models)
    tables: set[Table] = {m.__table__ for m in classes}  # type: ignore[attr-defined]
    key = f"touched:{id(callback)}"

    @event.listens_for(sessions, "before_flush")
    def _flush(session: Session, _ctx: Any, _instances: Any) -> None:
        if any(isinstance(o, classes) for o in (*session.new, *session.dirty,
                                                 *session.deleted)):
            session.info[key] = True

    @event.listens_for(sessions, "do_orm_execute")
    def _execute(state: ORMExecuteState) -> None:
        if (state.is_insert or state.is_update or state.is_delete) and \
                not state.execution_options.get(USAGE_STAMP):
            table = getattr(state.statement, "table", None)
            if table is not None and table in tables:
                state.session.info[key] = True

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        if session.info.pop(key, False):
            callback()

    @event.listens_for(sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(key, None)

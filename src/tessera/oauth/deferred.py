"""The token endpoint's fast path: cached client views and writes deferred to the group commit.

A `client_credentials` request with `private_key_jwt` needs to read the client (identity, keys)
and to write three things: the assertion's `jti` into the replay cache, the usage stamps, and
the audit event. Done in a transaction of its own, that is four or five statements and a commit
per token, and statement execution is most of a token's cost. Here instead:

- the client view comes from a per-node `ClientCache`, validated rather than trusted: the
  request records the `rev` it used (`identities.rev`, bumped by database triggers on every
  change, migration 0008) and the committing transaction checks it, so a suspended identity or
  a revoked key is refused at once, on every node, exactly as without the cache;
- the replay-cache insert, the rev check and the usage stamps travel as intents in the
  request's `WriteUnit` with its audit event; the audit group committer applies the units of
  many requests in one transaction (hooks below), refusing each unit whose jti was already used
  or whose rev moved, and the response leaves only once its unit is durable.

Nothing here weakens a check: a unit refused for a stale view is retried from the database,
and a replayed jti is refused whether the two requests met in one batch or in two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, column, delete, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService
from tessera.audit.groupcommit import WriteUnit
from tessera.audit.service import Settle
from tessera.db.fast import FastRowsStatement, FastStatement, JsonbRows, Sent, aware, json_array
from tessera.errors import WouldBlock
from tessera.identity import IdentityService
from tessera.identity.models import IdentityRow
from tessera.identity.service import ClientView
from tessera.oauth.models import RevokedTokenRow, UsedJTIRow

HOOK_REV = "identity.rev"  # intents: (identity id, rev the request relied on)
# intents: (issuer, jti, expires_at, replayed): `replayed(issuer)` builds the refusal, only
# for a use that lost (building an exception per request costs more than the rest of the use).
HOOK_REPLAY = "oauth.replay"
HOOK_SQL = "sql"  # intents: (statement, params), e.g. the usage stamps
# intents: the jti of a cached caller's access token, which must not have been revoked since
HOOK_NOT_REVOKED = "oauth.not_revoked"


class StaleClient(Exception):
    """The cached view of `client_id` changed before the request committed: retry it."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"client {client_id} changed while the request ran")
        self.client_id = client_id


class RevokedCaller(Exception):
    """The access token a cached caller relied on was revoked before the request committed."""

    def __init__(self, jti: str) -> None:
        super().__init__("the caller's access token was revoked")
        self.jti = jti


class ClientCache:
    """Client views by id, on this node. Loaded on a miss from a read-only session; entries are
    never trusted on their own (see the module docstring), so there is no time to live."""

    def __init__(self, sessions: sessionmaker[Session], identities: IdentityService, *,
                 max_entries: int = 100_000) -> None:
        self._sessions = sessions
        self._identities = identities
        self._max = max_entries
        self._views: dict[str, ClientView] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.loads = 0

    def get(self, client_id: str, *, fresh: bool = False, io: bool = True
            ) -> ClientView | None:
        """The cached view, else one read now; with `io=False`, `WouldBlock` on a miss."""
        if not fresh:
            view = self._views.get(client_id)
            if view is not None:
                self.hits += 1
                return view
        if not io:
            raise WouldBlock(f"client {client_id} is not cached")
        with self._sessions() as session:
            view = self._identities.client_view(session, client_id)
        self.loads += 1
        with self._lock:
            if view is None:  # not cached: a client registered later must be found at once
                self._views.pop(client_id, None)
                return None
            if len(self._views) >= self._max and client_id not in self._views:
                self._views.pop(next(iter(self._views)))  # the oldest insertion
            self._views[client_id] = view
        return view

    def evict(self, client_id: str) -> None:
        with self._lock:
            self._views.pop(client_id, None)


class DeferredReplay:
    """A `ReplayCache` that records the use in the unit; the committer's hook decides."""

    def __init__(self, unit: WriteUnit, replayed: Callable[[str], Exception]) -> None:
        self._unit = unit
        self._replayed = replayed

    def use_once(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        self._unit.add(HOOK_REPLAY, (issuer, jti, expires_at, self._replayed))
        return True


# -- the committer's hooks (one transaction, a batch of units) ------------------------------

def _revs_of(n: int) -> Any:
    t = IdentityRow.__table__
    return select(t.c.id, t.c.rev).where(t.c.id.in_([bindparam(f"id_{i}") for i in range(n)]))


# Compiled once per dialect and row count, run on the driver's cursor (tessera.db.fast): the
# committer runs both for every batch, and SQLAlchemy's execution path costs more than they do.
# On PostgreSQL one statement shape each, the rows in one jsonb parameter (`JsonbRows`):
# psycopg's work per parameter and per shape cost more than the statements.
_REVS = FastRowsStatement(_revs_of)
_REVS_PG = FastStatement(text(
    "SELECT id, rev FROM identities WHERE id IN "
    "(SELECT jsonb_array_elements_text(CAST(:ids AS jsonb)))").columns(column("id"),
                                                                       column("rev")))
_JTI_COLUMNS = ["issuer", "jti", "expires_at"]


def _jti_insert(n: int) -> Any:
    """INSERT .. VALUES (..), (..) ON CONFLICT DO NOTHING RETURNING (issuer, jti): the rows it
    returns are the uses that won (RETURNING, not rowcount: psycopg reports -1 for DO
    NOTHING). PostgreSQL's form, below, takes its rows as jsonb."""
    t = UsedJTIRow.__table__
    rows = [{c: bindparam(f"{c}_{i}", type_=t.c[c].type) for c in _JTI_COLUMNS}
            for i in range(n)]
    return sqlite_insert(t).values(rows).on_conflict_do_nothing().returning(t.c.issuer, t.c.jti)


_JTI_INSERT = FastRowsStatement(_jti_insert)
_JTI_ROWS = JsonbRows(UsedJTIRow.__table__, _JTI_COLUMNS)
_JTI_INSERT_PG = FastStatement(text(
    f"INSERT INTO used_jtis ({', '.join(_JTI_COLUMNS)}) " + _JTI_ROWS.sql
    + " ON CONFLICT DO NOTHING RETURNING issuer, jti").columns(column("issuer"),
                                                               column("jti")))


def insert_jtis(session: Session, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Store (issuer, jti, expires_at) rows in the replay cache; the (issuer, jti) pairs that
    were not stored before (the uses that won, on every node)."""
    return _won(send_jtis(session, rows))


def send_jtis(session: Session, rows: list[dict[str, Any]]) -> list[Sent]:
    """`insert_jtis`, sent: `_won` reads the pairs that won."""
    if _postgresql(session):
        return [_JTI_INSERT_PG.send(session, {"rows": _JTI_ROWS.param(
            [[r["issuer"], r["jti"], aware(r["expires_at"])] for r in rows])})]
    return _JTI_INSERT.send(session, rows)


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _won(sent: list[Sent]) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for part in sent for r in part.rows()}


# Undoes the insert of a jti no unit of the batch may use (`use_jtis`).
_FORGET_JTI = FastStatement(delete(UsedJTIRow.__table__).where(
    (UsedJTIRow.__table__.c.issuer == bindparam("issuer")) &
    (UsedJTIRow.__table__.c.jti == bindparam("jti"))))


def _revoked_of(n: int) -> Any:
    t = RevokedTokenRow.__table__
    return select(t.c.jti).where(t.c.jti.in_([bindparam(f"jti_{i}") for i in range(n)]))


_REVOKED = FastRowsStatement(_revoked_of)
_REVOKED_PG = FastStatement(text(
    "SELECT jti FROM revoked_tokens WHERE jti IN "
    "(SELECT jsonb_array_elements_text(CAST(:jtis AS jsonb)))").columns(column("jti")))


def check_not_revoked(session: Session, items: list[tuple[int, list[Any]]]) -> Settle:
    """Refuse every unit whose cached caller's token was revoked (on any node) since."""
    jtis = sorted({jti for _, intents in items for jti in intents})
    if _postgresql(session):
        sent = [_REVOKED_PG.send(session, {"jtis": json_array(jtis)})]
    else:
        sent = _REVOKED.send(session, [{"jti": j} for j in jtis])

    def settle(refused: dict[int, Exception]) -> dict[int, Exception]:
        revoked = {row[0] for part in sent for row in part.rows()}
        out: dict[int, Exception] = {}
        for index, intents in items:
            for jti in intents:
                if jti in revoked:
                    out[index] = RevokedCaller(jti)
                    break
        return out

    return settle


def check_revs(session: Session, items: list[tuple[int, list[Any]]]) -> Settle:
    """Refuse every unit that relied on a client view whose rev has moved since."""
    ids = sorted({identity for _, intents in items for identity, _ in intents})
    if _postgresql(session):
        sent = [_REVS_PG.send(session, {"ids": json_array(ids)})]
    else:
        sent = _REVS.send(session, [{"id": i} for i in ids])

    def settle(refused: dict[int, Exception]) -> dict[int, Exception]:
        current = {row[0]: row[1] for part in sent for row in part.rows()}
        out: dict[int, Exception] = {}
        for index, intents in items:
            for identity, rev in intents:
                if current.get(identity) != rev:
                    out[index] = StaleClient(identity)
                    break
        return out

    return settle


def use_jtis(session: Session, items: list[tuple[int, list[Any]]]) -> Settle:
    """Insert every jti of the batch in one statement; a unit loses when any of its jtis was
    already stored or was claimed by an earlier unit of the same batch.

    The insert is sent before the rev check's result is known (one round trip for both), so it
    also stores the jtis of units the rev check then refuses: a jti only such units claimed is
    deleted again in the same transaction, and a refused unit's claim passes to the next unit
    of the batch claiming the same jti. The outcome is the one of checking revs first: a
    request refused for a stale view is retried, and its retry must find its jti unused."""
    rows, seen = [], set()
    for _, intents in items:
        for issuer, jti, expires_at, _replayed in intents:
            if (issuer, jti) not in seen:
                seen.add((issuer, jti))
                rows.append({"issuer": issuer, "jti": jti, "expires_at": expires_at})
    sent = send_jtis(session, rows)

    def settle(refused: dict[int, Exception]) -> dict[int, Exception]:
        inserted = _won(sent)
        owner: dict[tuple[str, str], int] = {}
        for index, intents in items:
            if index not in refused:
                for issuer, jti, _expires, _replayed in intents:
                    owner.setdefault((issuer, jti), index)
        out: dict[int, Exception] = {}
        for index, intents in items:
            if index in refused:
                continue
            claimed: set[tuple[str, str]] = set()
            for issuer, jti, _expires, replayed in intents:
                key = (issuer, jti)
                if key not in inserted or owner[key] != index or key in claimed:
                    out[index] = replayed(issuer)  # stored before, an earlier unit's, or
                    break  # twice in this unit
                claimed.add(key)
        orphans = [{"issuer": i, "jti": j} for i, j in inserted if (i, j) not in owner]
        if orphans:
            _FORGET_JTI.run_many(session, orphans)
        return out

    return settle


def run_statements(session: Session, items: list[tuple[int, list[Any]]]
                   ) -> dict[int, Exception]:
    """Run the batch's small writes (usage stamps) in one stable order: by table, then row.
    Committers of several workers update overlapping rows; taking the row locks in the same
    order everywhere is what keeps them from deadlocking one another on PostgreSQL."""
    ordered = sorted((stmt for _, statements in items for stmt in statements),
                     key=lambda s: (str(getattr(s[0], "table", "")),
                                    str(s[1].get("row_id", ""))))
    for stmt, params in ordered:
        _fast(stmt).run(session, params)
    return {}


_FAST: dict[Any, FastStatement] = {}


def _fast(stmt: Any) -> FastStatement:
    """`stmt` run on the driver: through SQLAlchemy, a statement would take PostgreSQL's
    batch out of its pipeline (tessera.db.pipeline), and with many identities nearly every
    batch carries a usage stamp. The stamps' statements are built once (a bounded cache, in
    case a caller builds its statements per request)."""
    fast = _FAST.get(stmt)
    if fast is None:
        fast = FastStatement(stmt)
        if len(_FAST) < 64:
            _FAST[stmt] = fast
    return fast


def install(audit: AuditService) -> None:
    """Register the hooks, in the order they must run: checks before writes."""
    audit.register_hook(HOOK_REV, check_revs, pipelined=True)
    audit.register_hook(HOOK_NOT_REVOKED, check_not_revoked, pipelined=True)
    audit.register_hook(HOOK_REPLAY, use_jtis, pipelined=True)
    audit.register_hook(HOOK_SQL, run_statements)


__all__ = ["ClientCache", "DeferredReplay", "HOOK_NOT_REVOKED", "HOOK_REPLAY", "HOOK_REV",
           "HOOK_SQL", "RevokedCaller", "StaleClient", "install"]

"""Who may ask the decision point: a short-lived, per-node memory of callers whose bearer
access token passed the full check of `tessera.oauth.api_gate` (signature, claims, revoked
`jti`, status of every party behind the token, credential revocation).

A decision request then costs no signature verification and no database read for its caller,
and nothing is trusted on the cache's word alone: each entry keeps the `identities.rev` of
every party behind the token as the full check saw them, and the transaction that commits the
decision's audit event checks those revs and that the `jti` is still unrevoked (hooks in
`tessera.oauth.deferred`). A suspension, a resume, a revoked key or a revoked token, made
through any node, therefore refuses the cached caller at the very next decision's commit, which
then runs the full check again. Tokens bound to a key or a certificate are never cached.

Entries live at most `ttl` seconds (`TESSERA_AUTHZ__CALLER_CACHE_SECONDS`, default 1 s; 0
turns the cache off) and never past the token's `exp`. Only the SHA-256 of a token is kept,
never the token.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from tessera.clock import Clock

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Entry:
    claims: dict[str, Any]
    exp: float
    fresh_until: float
    revisions: tuple[tuple[str, int], ...] = ()


class CallerCache:
    """Token digest -> claims of a fully checked bearer token, for at most `ttl` seconds."""

    def __init__(self, clock: Clock, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self.ttl = ttl
        self._max = max_entries
        self._entries: dict[bytes, Entry] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by clear(): a check begun before it is not cached

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> dict[str, Any] | None:
        """The claims of `token` if it was fully checked less than `ttl` seconds ago."""
        entry = self.entry(token)
        return None if entry is None else entry.claims

    def entry(self, token: str) -> Entry | None:
        """The entry of `token` if it was fully checked less than `ttl` seconds ago."""
        if not self.enabled:
            return None
        entry = self._entries.get(self._key(token))
        if entry is None:
            return None
        now = self._clock.now().timestamp()
        if now >= entry.fresh_until or now >= entry.exp:
            self._entries.pop(self._key(token), None)
            return None
        return entry

    def put(self, token: str, claims: dict[str, Any], generation: int,
            revisions: list[tuple[str, int]] | None = None) -> None:
        """Remember a token that just passed the full check begun at `generation`."""
        exp = claims.get("exp")
        if not self.enabled or not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return
        entry = Entry(dict(claims), float(exp), self._clock.now().timestamp() + self.ttl,
                      tuple(revisions or ()))
        with self._lock:
            if generation != self.generation:
                return  # something changed while it was being checked: check again next time
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[self._key(token)] = entry

    def evict(self, token: str) -> None:
        with self._lock:
            self._entries.pop(self._key(token), None)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

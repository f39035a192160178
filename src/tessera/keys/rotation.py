"""Signing-key rotation: publish first, sign later, keep verifying until the last token dies.

1. `stage()` creates a `pending` key: it is in the JWKS but signs nothing.
2. Once it has been published for `prepublish_seconds` (longer than any JWKS cache), `tick()`
   activates it; the previous key becomes `retired` with `verify_until` = now + the longest
   token lifetime (+ a minute), and leaves the JWKS after that.
3. `rotate(now=True)` does both at once (emergency; verifiers refetch on an unknown `kid`).

Runs on exactly one node: the transaction first locks the key rows (`SELECT ... FOR UPDATE`
on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers) and re-checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock, utc
from tessera.keys.models import SigningKeyRow
from tessera.keys.service import KeyService


@dataclass(frozen=True)
class RotationPolicy:
    rotation_days: float = 30
    prepublish_seconds: int = 900
    max_token_ttl: int = 3600


class KeyRotation:
    """Stages, activates and retires signing keys; each step is audited."""

    def __init__(self, keys: KeyService, clock: Clock, audit: AuditService,
                 policy: RotationPolicy) -> None:
        self._keys = keys
        self._clock = clock
        self._audit = audit
        self.policy = policy

    def _lock(self, session: Session) -> list[SigningKeyRow]:
        # INVARIANT: every rotation step starts by locking the live key rows, so two nodes
        # running the job at once serialise here and the second sees the first's work.
        return list(session.scalars(select(SigningKeyRow).where(
            SigningKeyRow.purpose == "token",
            SigningKeyRow.status.in_(("active", "pending"))).with_for_update()))

    def stage(self, session: Session, *, actor: str = "system",
              ctx: RequestContext | None = None) -> str:
        """Publish a new pending key (or return the one already pending)."""
        rows = self._lock(session)
        pending = [r for r in rows if r.status == "pending"]
        if pending:
            return pending[0].kid
        current = next((r for r in rows if r.status == "active"), None)
        alg = current.alg if current else "ES256"
        kid = self._keys.create(session, alg, activate=False)
        self._audit.record(session, ev.KEY_STAGED, actor=actor, resource=f"key:{kid}", ctx=ctx,
                           data={"alg": alg, "provider": self._keys.provider.name})
        return kid

    def rotate(self, session: Session, *, now: bool = False, actor: str = "system",
               ctx: RequestContext | None = None) -> dict[str, Any]:
        """Stage a key; activate it at once only with `now` (else `tick` does it later)."""
        kid = self.stage(session, actor=actor, ctx=ctx)
        if now:
            return {"staged": kid, "activated": self._activate(session, actor, ctx)}
        activates = self._activation_time(session, kid)
        return {"staged": kid, "activated": None,
                "activates_at": activates.isoformat() if activates else None}

    def _activation_time(self, session: Session, kid: str) -> datetime | None:
        row = session.get(SigningKeyRow, kid)
        if row is None:
            return None
        return utc(row.created_at) + timedelta(seconds=self.policy.prepublish_seconds)

    def _activate(self, session: Session, actor: str, ctx: RequestContext | None) -> str:
        previous = [r.kid for r in self._lock(session) if r.status == "active"]
        kid = self._keys.rotate(session, self.policy.max_token_ttl)
        self._audit.record(session, ev.KEY_ROTATED, actor=actor, resource=f"key:{kid}", ctx=ctx,
                           data={"retired": previous,
                                 "verify_for_seconds": self.policy.max_token_ttl + 60})
        return kid

    def tick(self, session: Session) -> dict[str, Any]:
        """The scheduled job: stage when the active key is due, activate when published."""
        now = self._clock.now()
        rows = self._lock(session)
        active = sorted((r for r in rows if r.status == "active"),
                        key=lambda r: utc(r.activated_at or r.created_at))
        pending = [r for r in rows if r.status == "pending"]
        done: dict[str, Any] = {}
        destroyed = self._destroy_expired(session, now)
        if destroyed:
            done["destroyed"] = destroyed
        if pending:
            if utc(pending[0].created_at) + timedelta(
                    seconds=self.policy.prepublish_seconds) <= now:
                done["activated"] = self._activate(session, "system", None)
            return done
        if not active:
            return done
        age = now - utc(active[-1].activated_at or active[-1].created_at)
        due = timedelta(days=self.policy.rotation_days) - timedelta(
            seconds=self.policy.prepublish_seconds)
        if age >= due:
            done["staged"] = self.stage(session)
        return done

    def _destroy_expired(self, session: Session, now: datetime) -> list[str]:
        """Retired keys past `verify_until` verify nothing any more: destroy the private half."""
        rows = session.scalars(select(SigningKeyRow).where(
            SigningKeyRow.status == "retired", SigningKeyRow.private_blob.is_not(None),
            SigningKeyRow.verify_until < now)).all()
        for row in rows:
            self._keys.provider.destroy(row.kid, row.private_blob)
            row.private_blob = None
            self._audit.record(session, ev.KEY_DESTROYED, actor="system",
                               resource=f"key:{row.kid}")
        return [r.kid for r in rows]

    def list(self, session: Session) -> list[dict[str, Any]]:
        now = self._clock.now()
        rows = session.scalars(select(SigningKeyRow).where(SigningKeyRow.purpose == "token")
                               .order_by(SigningKeyRow.created_at)).all()
        out = []
        for r in rows:
            published = r.status in ("active", "pending") or (
                r.status == "retired" and r.verify_until is not None and
                utc(r.verify_until) > now)
            out.append({"kid": r.kid, "alg": r.alg, "provider": r.provider, "status": r.status,
                        "published": published, "created_at": r.created_at,
                        "activated_at": r.activated_at, "retired_at": r.retired_at,
                        "verify_until": r.verify_until})
        return out

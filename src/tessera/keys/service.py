"""Signing-key lifecycle and the published JWKS.

A key is `pending` (published, not yet signing), `active` (signing) or `retired` (published
until `verify_until`, when every token it signed has expired). Several nodes share the keys
through the database; each node re-reads them at most every `refresh_seconds`.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tessera.clock import Clock
from tessera.errors import WouldBlock
from tessera.keys.models import SigningKeyRow
from tessera.keys.ports import SUPPORTED_ALGS, KeyProvider, Signer


class NoActiveKey(Exception):
    """The database holds no active signing key (run `tessera init`)."""


def new_kid(now: datetime) -> str:
    return f"{now:%Y%m%d}-{secrets.token_hex(4)}"


class KeyService:
    """Creates and rotates signing keys; hands out the active signer and the JWKS."""

    def __init__(self, sessions: sessionmaker[Session], provider: KeyProvider, clock: Clock,
                 *, refresh_seconds: float = 10.0) -> None:
        self._sessions = sessions
        self._provider = provider
        self._clock = clock
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self._signer: Signer | None = None
        self._signers: dict[str, Signer] = {}
        self._jwks: dict[str, Any] = {"keys": []}
        self._keyset: KeySet | None = None

    @property
    def provider(self) -> KeyProvider:
        return self._provider

    def create(self, session: Session, alg: str = "ES256", *, activate: bool = True,
               purpose: str = "token") -> str:
        """Generate a key in the provider and record it; returns its kid."""
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"alg must be one of {', '.join(SUPPORTED_ALGS)}")
        now = self._clock.now()
        kid = new_kid(now)
        generated = self._provider.generate(kid, alg)
        session.add(SigningKeyRow(kid=kid, alg=alg, provider=self._provider.name, purpose=purpose,
                                  public_jwk=generated.public_jwk, private_blob=generated.blob,
                                  status="active" if activate else "pending", created_at=now,
                                  activated_at=now if activate else None))
        session.flush()
        self.invalidate()
        return kid

    def rotate(self, session: Session, max_token_ttl: int, alg: str | None = None) -> str:
        """Activate a pending key (or a new one); the old one verifies until its tokens die."""
        now = self._clock.now()
        rows = session.scalars(select(SigningKeyRow).where(
            SigningKeyRow.purpose == "token",
            SigningKeyRow.status.in_(("active", "pending")))).all()
        pending = [r for r in rows if r.status == "pending"]
        if pending:
            new = pending[0]
        else:
            current = next((r for r in rows if r.status == "active"), None)
            kid = self.create(session, alg or (current.alg if current else "ES256"),
                              activate=False)
            new = session.get_one(SigningKeyRow, kid)
        for r in rows:
            if r.status == "active":
                r.status = "retired"
                r.retired_at = now
                r.verify_until = now + timedelta(seconds=max_token_ttl + 60)
        new.status = "active"
        new.activated_at = now
        session.flush()
        self.invalidate()
        return new.kid

    def signer_for(self, session: Session, kid: str) -> Signer:
        """A signer for one stored key of any purpose (the CA's keys use this)."""
        row = session.get(SigningKeyRow, kid)
        if row is None:
            raise NoActiveKey(f"no key {kid}")
        return self._provider.load_signer(row.kid, row.alg, row.private_blob)

    def public_jwk(self, session: Session, kid: str) -> dict[str, Any]:
        row = session.get(SigningKeyRow, kid)
        if row is None:
            raise NoActiveKey(f"no key {kid}")
        return dict(row.public_jwk)

    def invalidate(self) -> None:
        self._loaded_at = -1e18

    def _load(self) -> None:
        if time.monotonic() - self._loaded_at < self._refresh:
            return
        with self._lock:
            if time.monotonic() - self._loaded_at < self._refresh:
                return
            now = self._clock.now()
            with self._sessions() as session:
                rows = session.scalars(select(SigningKeyRow).where(
                    SigningKeyRow.purpose == "token")).all()
            published = [r for r in rows if r.status in ("active", "pending") or
                         (r.status == "retired" and r.verify_until and r.verify_until > now)]
            active = sorted((r for r in rows if r.status == "active"),
                            key=lambda r: r.activated_at or r.created_at)
            signer = None
            if active:
                row = active[-1]
                signer = self._signers.get(row.kid) or self._provider.load_signer(
                    row.kid, row.alg, row.private_blob)
                self._signers = {row.kid: signer}
            self._signer = signer
            self._jwks = {"keys": [dict(r.public_jwk) for r in published]}
            self._keyset = (KeySet.import_key_set(self._jwks)  # type: ignore[arg-type]
                            if self._jwks["keys"] else None)
            self._loaded_at = time.monotonic()

    def signer(self, *, io: bool = True) -> Signer:
        """The active signer; with `io=False`, `WouldBlock` instead of a due reload."""
        if not io and time.monotonic() - self._loaded_at >= self._refresh:
            raise WouldBlock("signing keys are due for a reload")
        self._load()
        if self._signer is None:
            raise NoActiveKey("no active signing key; run `tessera init`")
        return self._signer

    def jwks(self) -> dict[str, Any]:
        self._load()
        return self._jwks

    def keyset(self) -> KeySet:
        self._load()
        if self._keyset is None:
            raise NoActiveKey("no signing keys")
        return self._keyset

    def has_kid(self, kid: str) -> bool:
        self._load()
        return any(k.get("kid") == kid for k in self._jwks["keys"])

"""Wiring: build the engine, key provider and services once, from settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService
from tessera.clock import Clock, SystemClock
from tessera.config import Settings
from tessera.db import make_engine, make_session_factory
from tessera.db.meta import get_meta
from tessera.identity import IdentityRules, IdentityService
from tessera.keys.ports import KeyProvider
from tessera.keys.rotation import KeyRotation, RotationPolicy
from tessera.keys.service import KeyService
from tessera.keys.software import SoftwareKeyProvider, load_or_create_master_key
from tessera.oauth.lifecycle import TokenLifecycle
from tessera.oauth.service import TokenService

DEFAULT_TRUST_DOMAIN = "tessera.local"


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    audit: AuditService
    keys: KeyService
    identities: IdentityService
    tokens: TokenService
    lifecycle: TokenLifecycle
    key_rotation: KeyRotation

    def close(self) -> None:
        self.engine.dispose()


def make_key_provider(settings: Settings) -> KeyProvider:
    master = settings.master_key.get_secret_value() if settings.master_key else None
    return SoftwareKeyProvider(load_or_create_master_key(settings.data_dir, master))


def build(settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None,
          provider: KeyProvider | None = None, trust_domain: str | None = None) -> Services:
    clock = clock or SystemClock()
    engine = engine or make_engine(settings.db_url)
    sessions = make_session_factory(engine)
    if trust_domain is None:
        try:
            with sessions() as s:
                trust_domain = get_meta(s, "trust_domain")
        except Exception:  # noqa: BLE001 - an un-migrated database has no meta table yet
            trust_domain = None
    audit = AuditService(clock, settings.node_id)
    keys = KeyService(make_session_factory(engine, readonly=True), provider or make_key_provider(settings), clock)
    identities = IdentityService(clock, audit, IdentityRules(
        trust_domain=trust_domain or DEFAULT_TRUST_DOMAIN,
        max_expiry_days=settings.identity.max_expiry_days))
    tokens = TokenService(issuer=settings.issuer_url, clock=clock, keys=keys,
                          identities=identities, audit=audit, settings=settings.tokens)
    lifecycle = TokenLifecycle(tokens, identities=identities, audit=audit, clock=clock,
                               keys=keys, settings=settings.tokens).install()
    key_rotation = KeyRotation(keys, clock, audit, RotationPolicy(
        settings.keys.rotation_days, settings.keys.prepublish_seconds, settings.tokens.max_ttl))
    return Services(settings=settings, clock=clock, engine=engine, sessions=sessions,
                    audit=audit, keys=keys, identities=identities, tokens=tokens,
                    lifecycle=lifecycle, key_rotation=key_rotation)

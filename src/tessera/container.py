"""Wiring: build the engine, key provider and services once, from settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditOptions, AuditService
from tessera.clock import Clock, SystemClock
from tessera.config import Settings
from tessera.db import make_engine, make_session_factory
from tessera.db.meta import get_meta
from tessera.identity import IdentityRules, IdentityService
from tessera.keys.ports import KeyProvider
from tessera.keys.service import KeyService
from tessera.monitor.caep import CaepService
from tessera.monitor.engine import MonitorConfig
from tessera.monitor.service import MonitorService
from tessera.keys.software import SoftwareKeyProvider, load_or_create_master_key
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
    monitor: MonitorService | None = None
    caep: CaepService | None = None

    def close(self) -> None:
        self.audit.close()
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
    audit = AuditService(clock, settings.node_id, AuditOptions(
        checkpoint_every=settings.audit.checkpoint_every,
        group_commit=settings.audit.group_commit, group_types=settings.audit.group_types))
    keys = KeyService(make_session_factory(engine, readonly=True), provider or make_key_provider(settings), clock)
    identities = IdentityService(clock, audit, IdentityRules(
        trust_domain=trust_domain or DEFAULT_TRUST_DOMAIN,
        max_expiry_days=settings.identity.max_expiry_days))
    audit.use_signer(keys.signer)
    audit.use_group_commit(sessions)
    if settings.audit.otlp_endpoint:
        from tessera.audit.otlp import OTLPStream

        audit.subscribe(OTLPStream(settings.audit.otlp_endpoint, node_id=settings.node_id))
    tokens = TokenService(issuer=settings.issuer_url, clock=clock, keys=keys,
                          identities=identities, audit=audit, settings=settings.tokens)
    monitor = MonitorService(clock, audit, identities, make_session_factory(engine, readonly=True),
                             config=MonitorConfig(
                                 learning_seconds=settings.monitor.learning_days * 86400,
                                 half_life=settings.monitor.risk_half_life_hours * 3600),
                             thresholds=settings.monitor.responses)
    caep = CaepService(clock, audit, tokens.issuer, keys.signer)
    monitor.event_hooks.append(caep.on_events)
    return Services(settings=settings, clock=clock, engine=engine, sessions=sessions,
                    audit=audit, keys=keys, identities=identities, tokens=tokens,
                    monitor=monitor, caep=caep)

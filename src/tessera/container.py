"""Wiring: build the engine, key provider and services once, from settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tessera import wiring
from tessera.access import AccessService, ApprovalService, RoleApproverPolicy, WebhookService
from tessera.audit import AuditOptions, AuditService
from tessera.authz import AuthzService
from tessera.authz.callers import CallerCache
from tessera.ca import CAService
from tessera.clock import Clock, SystemClock
from tessera.config import Settings
from tessera.db import make_engine, make_session_factory
from tessera.db.invalidation import on_commit_touching
from tessera.db.meta import get_meta
from tessera.federation import FederationService
from tessera.identity import IdentityRules, IdentityService
from tessera.identity.models import CredentialRow, IdentityRow
from tessera.keys.ports import KeyProvider
from tessera.keys.rotation import KeyRotation, RotationPolicy
from tessera.keys.service import KeyService
from tessera.keys.software import SoftwareKeyProvider, load_or_create_master_key
from tessera.monitor.caep import CaepService
from tessera.monitor.engine import MonitorConfig
from tessera.monitor.service import MonitorService
from tessera.oauth.api_gate import ApiGate
from tessera.oauth.lifecycle import TokenLifecycle
from tessera.oauth.models import RevokedTokenRow
from tessera.oauth.ports import Client
from tessera.oauth.service import TokenService
from tessera.sealing import SecretBox
from tessera.secrets import SecretsService

DEFAULT_TRUST_DOMAIN = "tessera.local"


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    # For request paths that only read: on SQLite they begin a deferred (read) transaction,
    # which never waits for the write lock the audit group committer holds under load. A
    # session of this factory must not write (a read transaction that later writes can fail
    # at once with SQLITE_BUSY): work that may write takes `sessions`.
    read_sessions: sessionmaker[Session]
    audit: AuditService
    keys: KeyService
    identities: IdentityService
    tokens: TokenService
    webhooks: WebhookService
    access: AccessService
    approvals: ApprovalService
    secrets: SecretsService
    authz: AuthzService
    ca: CAService
    federation: FederationService
    lifecycle: TokenLifecycle
    key_rotation: KeyRotation
    # The one check of a presented access token (`tessera.api.deps.authenticate`).
    gate: ApiGate
    monitor: MonitorService | None = None
    caep: CaepService | None = None
    callers: CallerCache | None = None

    def close(self) -> None:
        self.audit.close()
        self.engine.dispose()


def make_key_provider(settings: Settings) -> KeyProvider:
    if settings.keys.provider == "pkcs11":
        from tessera.keys.pkcs11 import PKCS11KeyProvider
        from tessera.keys.software import KeyProviderError

        k = settings.keys
        if not (k.pkcs11_module and k.pkcs11_token_label and k.pkcs11_pin):
            raise KeyProviderError("the pkcs11 provider needs TESSERA_KEYS__PKCS11_MODULE, "
                                   "TESSERA_KEYS__PKCS11_TOKEN_LABEL and TESSERA_KEYS__PKCS11_PIN")
        return PKCS11KeyProvider(k.pkcs11_module, k.pkcs11_token_label,
                                 k.pkcs11_pin.get_secret_value())
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
                          identities=identities, audit=audit, settings=settings.tokens,
                          sessions=sessions)
    box = SecretBox(load_or_create_master_key(
        settings.data_dir, settings.master_key.get_secret_value() if settings.master_key
        else None))
    webhooks = WebhookService(clock, audit, box,
                              max_attempts=settings.access.webhook_max_attempts)
    approver_policy = RoleApproverPolicy()
    access = AccessService(clock, audit, identities, approver_policy, webhooks, settings.access)
    approvals = ApprovalService(clock, audit, identities, approver_policy, webhooks, box,
                                settings.access, sessions)
    secrets_service = SecretsService(clock, audit, identities, box, settings.secrets)

    # What an identity holds (requests, approvals, leases) ends when it is suspended or
    # decommissioned, and a lease ends with the grant that allowed it.
    wiring.IdentityHoldings(access, approvals, secrets_service).subscribe(identities)
    lifecycle = TokenLifecycle(tokens, identities=identities, audit=audit, clock=clock,
                               keys=keys, settings=settings.tokens, box=box,
                               sessions=sessions).install()
    key_rotation = KeyRotation(keys, clock, audit, RotationPolicy(
        settings.keys.rotation_days, settings.keys.prepublish_seconds, settings.tokens.max_ttl))
    ca = CAService(clock, keys, identities, audit, settings.ca)
    federation = FederationService(clock, identities, audit, settings.federation,
                                   leeway=settings.tokens.leeway,
                                   readonly=make_session_factory(engine, readonly=True))
    register_workload_identity(tokens, ca, federation, identities)
    authz = AuthzService(clock, audit, identities)
    authz.install(sessions)
    connect_policy(authz, approvals, lifecycle)
    monitor = MonitorService(clock, audit, identities, make_session_factory(engine, readonly=True),
                             config=MonitorConfig(
                                 learning_seconds=settings.monitor.learning_days * 86400,
                                 half_life=settings.monitor.risk_half_life_hours * 3600),
                             thresholds=settings.monitor.responses,
                             lease_seconds=settings.monitor.lease)
    caep = CaepService(clock, audit, tokens.issuer, keys.signer)
    monitor.event_hooks.append(caep.on_events)
    wiring.connect(authz=authz, monitor=monitor, lifecycle=lifecycle, federation=federation,
                   identities=identities, webhooks=webhooks, sessions=sessions, clock=clock,
                   gate_cache_seconds=settings.authz.risk_gate_cache_seconds)
    callers = CallerCache(clock, settings.authz.caller_cache_seconds)
    if callers.enabled:
        # Revoked tokens, identity status and credential revocation: what check_active reads.
        on_commit_touching(sessions, [RevokedTokenRow, IdentityRow, CredentialRow],
                           callers.clear)
    return Services(settings=settings, clock=clock, engine=engine, sessions=sessions,
                    read_sessions=make_session_factory(engine, readonly=True),
                    audit=audit, keys=keys, identities=identities, tokens=tokens,
                    webhooks=webhooks, access=access, approvals=approvals,
                    secrets=secrets_service, authz=authz, ca=ca,
                    federation=federation, monitor=monitor, caep=caep,
                    lifecycle=lifecycle, key_rotation=key_rotation, callers=callers,
                    gate=ApiGate(lifecycle, identities))


def connect_policy(authz: AuthzService, approvals: ApprovalService,
                   lifecycle: TokenLifecycle) -> None:
    """The decision point spends `@approval` references through the approvals service, and
    token exchange asks it whether the actor may `act_for` the subject."""
    from tessera.access.ports import ActionRequest
    from tessera.audit import RequestContext
    from tessera.authz.ports import ApprovalBinding
    from tessera.errors import InvalidRequest, Refused

    def redeem(session: Session, reference: str, binding: ApprovalBinding, *,
               actor: str | None, ctx: RequestContext | None) -> str | None:
        request = ActionRequest(binding.principal, binding.action, binding.resource,
                                dict(binding.context))
        try:
            approvals.use(session, reference, request, actor=actor, ctx=ctx,
                          group=binding.group)
        except Refused as exc:
            return exc.code
        return None

    def act_for(session: Session, actor: Client, subject: str) -> None:
        denied = authz.delegation_refusal(actor.client_id, subject)
        if denied is not None:
            raise InvalidRequest("policy does not allow this client to act for the subject")

    authz.approval_redeemer = redeem
    lifecycle.delegation_checks.append(act_for)


def register_workload_identity(tokens: TokenService, ca: CAService,
                               federation: FederationService,
                               identities: IdentityService) -> None:
    """RFC 7523 §2.1 federated grant; RFC 8705 mutual-TLS client authentication."""
    from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE, JWTBearerGrant
    from tessera.oauth.rfc8705_mtls import MutualTLSAuthenticator

    tokens.grants[GRANT_TYPE] = JWTBearerGrant(tokens, federation, identities)
    tokens.authenticators.append(MutualTLSAuthenticator(ca, identities))
    tokens.auth_methods += ["tls_client_auth", "self_signed_tls_client_auth"]
    tokens.certificate_bound_tokens = True

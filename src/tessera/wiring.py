"""Connections between domain packages that no single package owns.

Called once by the container (the composition root). Each function names the two packages it
joins, so a reader can find every cross-package hook in one place.
"""

from __future__ import annotations

import json
import threading
from base64 import urlsafe_b64decode
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tessera.access import AccessService, ApprovalService
from tessera.access.ports import OWNER_GROUP
from tessera.access.webhooks import WebhookService
from tessera.audit import events as ev
from tessera.authz import AuthzService
from tessera.clock import Clock
from tessera.db.invalidation import on_commit_touching
from tessera.errors import InvalidRequest
from tessera.federation.service import FederationRejected, FederationService
from tessera.identity import IdentityService
from tessera.identity.models import IdentityRow
from tessera.monitor.models import ResponseRow
from tessera.monitor.service import MonitorService
from tessera.oauth.lifecycle import SubjectToken, TokenLifecycle
from tessera.secrets import SecretsService


class MonitorRisk:
    """authz ← monitor: `context.risk` in every decision is the monitor's current score."""

    def __init__(self, monitor: MonitorService) -> None:
        self._monitor = monitor

    def needs_io(self, principal_id: str) -> bool:
        """Whether `score` would read the database (the cached score is stale)."""
        return self._monitor.risk_needs_io(principal_id)

    def score(self, principal_id: str) -> int:
        return int(self._monitor.risk_of(principal_id))


def _unverified_issuer(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


class FederatedSubjects:
    """oauth ← federation: an RFC 8693 `subject_token` from a trusted external issuer.

    The token is verified and mapped exactly as for the JWT bearer grant; the subject is the
    mapped identity, and what it may delegate is what that identity may hold itself. The
    issuer's keys are fetched by `prefetch`, which the token exchange runs before client
    authentication can open the request's transaction; resolving uses cached keys only.
    """

    def __init__(self, federation: FederationService, identities: IdentityService,
                 own_issuer: str) -> None:
        self._federation = federation
        self._identities = identities
        self._own_issuer = own_issuer

    def prefetch(self, token: str) -> None:
        iss = _unverified_issuer(token)
        if iss is not None and iss != self._own_issuer:
            self._federation.prefetch(token)

    def __call__(self, session: Session, token: str, token_type: str,
                 now: datetime) -> SubjectToken | None:
        iss = _unverified_issuer(token)
        if iss is None or iss == self._own_issuer:
            return None  # not a JWT, or one of Tessera's own (another resolver's)
        try:
            # fetch=False: `prefetch` already tried; a second fetch of a failing issuer would
            # double the wait (and may run inside the request's transaction).
            found = self._federation.authenticate_token(session, token, fetch=False)
        except FederationRejected as exc:
            raise InvalidRequest("subject_token is invalid") from exc
        row = self._identities.find(session, found.identity_id)
        if row is None or not self._identities.is_usable(row):
            raise InvalidRequest("subject_token is invalid")
        return SubjectToken(subject=row.id, exp=int(found.expires_at),
                            scope=" ".join(row.allowed_scopes) or None, issuer=found.issuer)


class RiskApprovalGate:
    """authz ← monitor: while a "require_approval" response is active for a principal, each
    permit it would get needs its owner's approval (the `ApprovalGate` port).

    With `ttl` > 0 the gate answers from a per-node set of the flagged principals, read at
    most every `ttl` seconds (and at once after this node commits a change to a response), so
    a decision reads nothing from the database; a response made through another node takes
    effect here within `ttl` seconds. With `ttl` = 0 every call reads the caller's session."""

    def __init__(self, monitor: MonitorService, group: str, *, clock: Clock | None = None,
                 ttl: float = 0.0) -> None:
        self._monitor = monitor
        self._group = group
        self._clock = clock
        self.ttl = ttl if clock is not None else 0.0
        self._flagged: frozenset[str] = frozenset()
        self._fresh_until = float("-inf")
        self._generation = 0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._fresh_until = float("-inf")

    def needs_io(self) -> bool:
        """Whether the next call reads the database (no cache, or the cache is stale)."""
        return self.ttl <= 0 or self._clock is None or \
            self._clock.now().timestamp() >= self._fresh_until

    def refresh(self) -> None:
        if self.ttl <= 0 or self._clock is None:
            return
        generation = self._generation
        started = self._clock.now().timestamp()
        flagged = frozenset(self._monitor.approval_required_ids())
        with self._lock:
            if generation == self._generation:  # no change committed meanwhile
                self._flagged, self._fresh_until = flagged, started + self.ttl

    def __call__(self, session: Session | None, principal_id: str) -> str | None:
        if self.ttl > 0:
            if self.needs_io():
                self.refresh()
            if not self.needs_io():
                return self._group if principal_id in self._flagged else None
        if session is None:
            flagged = self._monitor.requires_approval_now(principal_id)
        else:
            flagged = self._monitor.requires_approval(session, principal_id)
        return self._group if flagged else None


def notify_owner(webhooks: WebhookService) -> Callable[[Session, str | None, dict[str, Any]],
                                                       None]:
    """access ← monitor: a risk response is sent to the owner's webhooks (the outbox, in the
    response's transaction). The notice names identity, response, risk and reasons only."""

    def send(session: Session, owner: str | None, notice: dict[str, Any]) -> None:
        webhooks.enqueue(session, ev.OWNER_NOTIFIED, dict(notice), owner)

    return send


class IdentityHoldings:
    """access, secrets ← identity: what an identity holds ends with its standing.

    Suspension (an admin's, through the API or CLI, or the monitor's risk response) and
    decommissioning both cancel the access requests about it or made by it, end the action
    approvals for it or asked by it, and mark its dynamic-credential leases for revocation (the
    jobs runner blocks each login, ends its sessions and drops it on the target), each with an
    audit event. Resuming revives none of them. The end of a grant revokes the leases that
    grant allowed. Every handler joins the transaction of the change that triggers it."""

    def __init__(self, access: AccessService, approvals: ApprovalService,
                 secrets: SecretsService) -> None:
        self._access = access
        self._approvals = approvals
        self._secrets = secrets

    def subscribe(self, identities: IdentityService) -> None:
        identities.on_suspend(self.suspended)
        identities.on_decommission(self.decommissioned)
        identities.on_grant_ended(self.grant_ended)

    def _end(self, session: Session, identity_id: str, actor: str, reason: str) -> None:
        self._access.cancel_for_identity(session, identity_id, actor, reason)
        self._approvals.cancel_for_identity(session, identity_id, actor, reason)
        self._secrets.revoke_for_identity(session, identity_id, actor=actor or None,
                                          reason=reason)

    def suspended(self, session: Session, row: IdentityRow, actor: str) -> None:
        self._end(session, str(row.id), actor, "identity suspended")

    def decommissioned(self, session: Session, row: IdentityRow, actor: str) -> None:
        self._end(session, str(row.id), actor, "identity decommissioned")

    def grant_ended(self, session: Session, identity_id: str, role: str, actor: str) -> None:
        self._secrets.revoke_unsupported(session, identity_id, actor=actor or None,
                                         reason=f"grant of role {role} ended")


def connect(*, authz: AuthzService, monitor: MonitorService, lifecycle: TokenLifecycle,
            federation: FederationService, identities: IdentityService,
            webhooks: WebhookService | None = None,
            sessions: sessionmaker[Session] | None = None, clock: Clock | None = None,
            gate_cache_seconds: float = 0.0) -> None:
    authz.set_risk_provider(MonitorRisk(monitor))
    gate = RiskApprovalGate(monitor, OWNER_GROUP, clock=clock,
                            ttl=gate_cache_seconds if sessions is not None else 0.0)
    if sessions is not None and gate.ttl > 0:
        on_commit_touching(sessions, [ResponseRow], gate.invalidate)
    authz.approval_gate = gate
    if webhooks is not None:
        monitor.owner_notifiers.append(notify_owner(webhooks))
    federated = FederatedSubjects(federation, identities, lifecycle.tokens.issuer)
    lifecycle.subject_prefetchers.append(federated.prefetch)
    lifecycle.subject_resolvers.append(federated)
    # monitor → oauth: "suspend and revoke its tokens" revokes every live token family.
    monitor.token_revokers.append(
        lambda session, identity_id: lifecycle.revoke_identity(session, identity_id,
                                                               reason="risk response"))


__all__ = ["FederatedSubjects", "IdentityHoldings", "MonitorRisk", "RiskApprovalGate", "connect",
                      "notify_owner"]

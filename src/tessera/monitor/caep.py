"""Continuous access evaluation: subscribers get a signed SET when access must be cut.

Subscriptions are webhooks. When the audit stream shows an identity suspended or
decommissioned, a token revoked or a credential revoked, each subscriber gets a delivery row
holding the signed SET; `deliver_due` pushes them (RFC 8935), retrying with exponential backoff.
Deliveries that fail every attempt stay in the table, visible as `failed`, and can be retried.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.audit.service import StreamEvent
from tessera.clock import Clock
from tessera.errors import NotFound, ValidationFailed
from tessera.monitor import rfc8417_set as sets
from tessera.monitor.models import DeliveryRow, SubscriptionRow
from tessera.monitor.rfc8935_push import push

# Which audit events become which CAEP event, and the detail carried with it.
EVENT_MAP: dict[str, tuple[str, dict[str, Any]]] = {
    ev.IDENTITY_SUSPENDED: (sets.SESSION_REVOKED, {"reason_admin": {"en": "identity suspended"}}),
    ev.IDENTITY_DECOMMISSIONED: (sets.SESSION_REVOKED,
                                 {"reason_admin": {"en": "identity decommissioned"}}),
    ev.TOKEN_REVOKED: (sets.SESSION_REVOKED, {"reason_admin": {"en": "token revoked"}}),
    ev.CREDENTIAL_REVOKED: (sets.CREDENTIAL_CHANGE, {"credential_type": "x509_or_jwk",
                                                     "change_type": "revoke"}),
}
MAX_ATTEMPTS = 8
BACKOFF_BASE = 5.0  # seconds; doubles with each attempt
BACKOFF_MAX = 3600.0


def backoff(attempts: int) -> float:
    return min(BACKOFF_BASE * 2 ** max(0, attempts - 1), BACKOFF_MAX)


class CaepService:
    def __init__(self, clock: Clock, audit: AuditService, issuer: str,
                 signer: Callable[[], Any], *, allow_http_hosts: tuple[str, ...] = (
                     "127.0.0.1", "localhost", "::1")) -> None:
        self._clock = clock
        self._audit = audit
        self._issuer = issuer
        self._signer = signer
        self._allow_http = allow_http_hosts
        self.http: httpx.Client | None = None

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, session: Session, url: str, *, events: list[str] | None = None,
                  audience: str | None = None, description: str = "", actor: str,
                  ctx: RequestContext | None = None) -> SubscriptionRow:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
            raise ValidationFailed("url must be an absolute https URL")
        if parts.scheme == "http" and parts.hostname not in self._allow_http:
            raise ValidationFailed("plain http is allowed for loopback receivers only")
        known = sorted({t for t, _ in EVENT_MAP.values()})
        chosen = events or known
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValidationFailed(f"unknown event types: {', '.join(unknown)}",
                                   extra={"supported": known})
        now = self._clock.now()
        row = SubscriptionRow(id=f"sub_{secrets.token_hex(8)}", url=url, events=chosen,
                              audience=audience or url, status="active",
                              description=description[:400], created_at=now, created_by=actor)
        session.add(row)
        self._audit.record(session, ev.SUBSCRIPTION_CREATED, actor=actor, ctx=ctx,
                           resource=f"subscription:{row.id}", data={"url": url,
                                                                    "events": chosen})
        return row

    def unsubscribe(self, session: Session, sub_id: str, *, actor: str,
                    ctx: RequestContext | None = None) -> SubscriptionRow:
        row = self.get(session, sub_id)
        row.status = "deleted"
        self._audit.record(session, ev.SUBSCRIPTION_DELETED, actor=actor, ctx=ctx,
                           resource=f"subscription:{row.id}")
        return row

    @staticmethod
    def get(session: Session, sub_id: str) -> SubscriptionRow:
        row = session.get(SubscriptionRow, sub_id)
        if row is None or row.status == "deleted":
            raise NotFound(f"subscription {sub_id!r} not found")
        return row

    @staticmethod
    def subscriptions(session: Session) -> list[SubscriptionRow]:
        return list(session.scalars(select(SubscriptionRow).where(
            SubscriptionRow.status == "active").order_by(SubscriptionRow.created_at)))

    @staticmethod
    def deliveries(session: Session, *, subscription: str | None = None,
                   status: str | None = None, limit: int = 100) -> list[DeliveryRow]:
        q = select(DeliveryRow)
        if subscription:
            q = q.where(DeliveryRow.subscription_id == subscription)
        if status:
            q = q.where(DeliveryRow.status == status)
        return list(session.scalars(q.order_by(DeliveryRow.created_at.desc()).limit(limit)))

    def retry(self, session: Session, delivery_id: str) -> DeliveryRow:
        row = session.get(DeliveryRow, delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id!r} not found")
        if row.status != "delivered":
            row.status, row.next_attempt_at = "pending", self._clock.now()
        return row

    # -- from the audit stream --------------------------------------------------------------

    def on_events(self, session: Session, records: list[StreamEvent]) -> int:
        """Queue a SET per subscriber for each audit record that ends access."""
        relevant = [r for r in records if r.type in EVENT_MAP and r.outcome == "success"]
        if not relevant:
            return 0
        subs = self.subscriptions(session)
        if not subs:
            return 0
        signer = self._signer()
        now = self._clock.now()
        count = 0
        for rec in relevant:
            event_type, detail = EVENT_MAP[rec.type]
            subject = rec.subject or rec.actor
            if not subject:
                continue
            for sub in subs:
                if event_type not in sub.events:
                    continue
                claims = sets.build_set(issuer=self._issuer, audience=sub.audience,
                                        event_type=event_type, subject=str(subject),
                                        event_timestamp=int(rec.ts.timestamp()),
                                        now=int(now.timestamp()), detail=detail,
                                        txn=rec.request_id)
                session.add(DeliveryRow(id=claims["jti"], subscription_id=sub.id,
                                        event_type=event_type, subject=str(subject),
                                        set_jws=sets.sign_set(signer, claims),
                                        status="pending", attempts=0, next_attempt_at=now,
                                        last_error=None, created_at=now, delivered_at=None))
                count += 1
        return count

    def deliver_due(self, sessions: sessionmaker[Session], limit: int = 50) -> dict[str, int]:
        """Push due SETs outside any transaction, then record each outcome."""
        now = self._clock.now()
        with sessions() as session:
            due = [(d.id, d.subscription_id, d.set_jws) for d in session.scalars(
                select(DeliveryRow).where(DeliveryRow.status == "pending",
                                          DeliveryRow.next_attempt_at <= now)
                .order_by(DeliveryRow.next_attempt_at).limit(limit))]
            urls = {s.id: s.url for s in session.scalars(select(SubscriptionRow))}
        stats = {"delivered": 0, "retry": 0, "failed": 0}
        if not due:
            return stats
        client = self.http or httpx.Client(timeout=5.0, follow_redirects=False)
        try:
            results = [(d_id, push(client, urls.get(sub_id, ""), jws))
                       for d_id, sub_id, jws in due]
        finally:
            if self.http is None:
                client.close()
        with sessions() as session:
            for d_id, result in results:
                row = session.get(DeliveryRow, d_id)
                if row is None or row.status != "pending":
                    continue
                row.attempts += 1
                if result.delivered:
                    row.status, row.delivered_at, row.last_error = "delivered", now, None
                    stats["delivered"] += 1
                elif result.retry and row.attempts < MAX_ATTEMPTS:
                    row.next_attempt_at = now + timedelta(seconds=backoff(row.attempts))
                    row.last_error = result.error
                    stats["retry"] += 1
                else:
                    row.status, row.last_error = "failed", result.error
                    stats["failed"] += 1
            session.commit()
        return stats

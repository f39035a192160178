"""Owner notifications: signed webhook POSTs from an outbox, retried with back-off.

A change writes its delivery rows in its own transaction (so a rolled-back change notifies no
one); the jobs runner sends them. Each POST carries `Tessera-Signature: t=<unix>,v1=<hex>`, the
HMAC-SHA256 under the webhook's secret of `<t>.<body>`; receivers recompute it and compare with
`hmac.compare_digest`, and reject stale `t` values.
"""

from __future__ import annotations

import builtins
import fnmatch
import hashlib
import hmac
import json
import logging
import secrets
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from tessera.access.models import WebhookDeliveryRow, WebhookRow
from tessera.access.schemas import WebhookCreate, WebhookRead
from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.clock import Clock
from tessera.ids import new_id
from tessera.sealing import SecretBox

log = logging.getLogger("tessera.access.webhooks")
SIGNATURE_HEADER = "Tessera-Signature"
BASE_BACKOFF = 30
MAX_BACKOFF = 3600


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str, body: bytes) -> bool:
    """Receiver-side check (also used by the tests)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        expected = signature(secret, int(fields["t"]), body)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(expected, header)


class WebhookService:
    """Register webhooks, queue notifications, deliver them."""

    def __init__(self, clock: Clock, audit: AuditService, box: SecretBox, *,
                 max_attempts: int = 6, transport: httpx.BaseTransport | None = None) -> None:
        self._clock = clock
        self._audit = audit
        self._box = box
        self.max_attempts = max_attempts
        self.transport = transport

    @staticmethod
    def read(row: WebhookRow, secret: str | None = None) -> WebhookRead:
        return WebhookRead(id=row.id, url=row.url, owner=row.owner_id, events=row.events,
                           active=row.active, created_at=row.created_at, secret=secret)

    def create(self, session: Session, data: WebhookCreate, *, actor: str | None,
               ctx: RequestContext | None = None) -> tuple[WebhookRow, str]:
        now = self._clock.now()
        secret = "tsr_whsec_" + secrets.token_urlsafe(32)
        row = WebhookRow(id=new_id("whk", now), url=str(data.url), owner_id=data.owner,
                         events=list(data.events), secret_sealed=self._box.seal(secret),
                         active=True, created_at=now)
        session.add(row)
        self._audit.record(session, ev.WEBHOOK_CREATED, actor=actor, ctx=ctx,
                           resource=f"webhook:{row.id}",
                           data={"url": row.url, "owner": row.owner_id, "events": row.events})
        return row, secret

    # (The annotations below this method say `builtins.list`: in the class body, `list` is it.)
    def list(self, session: Session) -> list[WebhookRow]:
        return list(session.scalars(select(WebhookRow).order_by(WebhookRow.id)))

    def enqueue(self, session: Session, event: str, data: dict[str, Any],
                owner_id: str | None) -> int:
        """Queue `event` for every active webhook of `owner_id` (and the catch-all ones)."""
        now = self._clock.now()
        hooks = session.scalars(select(WebhookRow).where(
            WebhookRow.active.is_(True),
            or_(WebhookRow.owner_id.is_(None), WebhookRow.owner_id == owner_id)))
        count = 0
        for hook in hooks:
            if not any(fnmatch.fnmatchcase(event, pattern) for pattern in hook.events):
                continue
            did = new_id("dlv", now)
            session.add(WebhookDeliveryRow(
                id=did, webhook_id=hook.id, event=event, status="pending", attempts=0,
                payload={"id": did, "type": event, "created_at": now.isoformat(),
                         "owner": owner_id, "data": data},
                next_attempt_at=now, created_at=now))
            count += 1
        return count

    def due(self, session: Session, limit: int = 100) -> builtins.list[str]:
        now = self._clock.now()
        return list(session.scalars(select(WebhookDeliveryRow.id).where(
            WebhookDeliveryRow.status == "pending", WebhookDeliveryRow.next_attempt_at <= now)
            .order_by(WebhookDeliveryRow.next_attempt_at).limit(limit)))

    def deliver_due(self, sessions: sessionmaker[Session]) -> int:
        """Job body: send every due delivery; owns its transactions (none held over HTTP)."""
        with sessions() as session:
            ids = self.due(session)
        sent = 0
        for did in ids:
            with sessions() as session:
                row = session.get(WebhookDeliveryRow, did)
                hook = session.get(WebhookRow, row.webhook_id) if row else None
                if row is None or hook is None or row.status != "pending":
                    continue
                url, secret = hook.url, self._box.open(hook.secret_sealed)
                body = json.dumps(row.payload, sort_keys=True, separators=(",", ":")).encode()
                event = row.event
            status = self._post(url, secret, event, did, body)
            with sessions() as session:
                row = session.get(WebhookDeliveryRow, did)
                if row is None:
                    continue
                sent += self._record(session, row, status)
                session.commit()
        return sent

    def _post(self, url: str, secret: str, event: str, delivery_id: str,
              body: bytes) -> int | None:
        ts = int(self._clock.now().timestamp())
        headers = {"Content-Type": "application/json", "Tessera-Event": event,
                   "Tessera-Delivery": delivery_id, SIGNATURE_HEADER: signature(secret, ts, body)}
        try:
            with httpx.Client(timeout=5, transport=self.transport,
                              follow_redirects=False) as http:
                return http.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("webhook delivery %s failed: %s", delivery_id, type(exc).__name__)
            return None

    def _record(self, session: Session, row: WebhookDeliveryRow, status: int | None) -> int:
        now = self._clock.now()
        row.attempts += 1
        row.last_status = status
        resource = f"webhook:{row.webhook_id}"
        if status is not None and 200 <= status < 300:
            row.status, row.delivered_at = "delivered", now
            self._audit.record(session, ev.WEBHOOK_DELIVERED, resource=resource,
                               data={"delivery": row.id, "event": row.event,
                                     "attempts": row.attempts})
            return 1
        if row.attempts >= self.max_attempts:
            row.status = "failed"
            self._audit.record(session, ev.WEBHOOK_FAILED, outcome="failure", resource=resource,
                               reasons=[f"status {status}" if status else "unreachable"],
                               data={"delivery": row.id, "event": row.event,
                                     "attempts": row.attempts})
            return 0
        delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (row.attempts - 1))
        row.next_attempt_at = now + timedelta(seconds=delay)
        return 0

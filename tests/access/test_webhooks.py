"""Owner notifications: signed webhook POSTs to a loopback receiver, retried on failure."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.loopback import Receiver

from tessera.access.models import WebhookDeliveryRow
from tessera.access.schemas import AccessRequestCreate, RoleDefine, WebhookCreate
from tessera.access.webhooks import SIGNATURE_HEADER, verify_signature
from tessera.clock import FakeClock
from tessera.container import Services


def test_owner_is_notified_with_a_signed_post_and_failures_are_retried(
        services: Services, make_identity: Callable[..., Any], receiver: Receiver,
        clock: FakeClock) -> None:
    owner = make_identity("olga", kind="human")
    stranger = make_identity("sam", kind="human")
    agent = make_identity("crawler", owner=owner.id)
    with services.sessions() as s:
        _, secret = services.webhooks.create(s, WebhookCreate(
            url=receiver.url, owner=owner.id, events=["access.request.*"]), actor="test")
        services.webhooks.create(s, WebhookCreate(url=receiver.url + "/other",
                                                  owner=stranger.id), actor="test")
        services.access.define_role(s, RoleDefine(name="reader", max_duration=3600),
                                    actor="test")
        services.access.create(s, AccessRequestCreate(role="reader", duration=600,
                                                      justification="index the docs"),
                               requester=agent.id)
        s.commit()
    receiver.statuses = [500]
    assert services.webhooks.deliver_due(services.sessions) == 0
    assert len(receiver.received) == 1
    assert services.webhooks.deliver_due(services.sessions) == 0  # not due yet: back-off
    assert len(receiver.received) == 1
    clock.advance(31)
    assert services.webhooks.deliver_due(services.sessions) == 1
    headers, body = receiver.received[-1]
    assert verify_signature(secret, headers[SIGNATURE_HEADER], body)
    assert not verify_signature(secret, headers[SIGNATURE_HEADER], body + b" ")
    assert not verify_signature("tsr_whsec_wrong", headers[SIGNATURE_HEADER], body)
    payload = json.loads(body)
    assert payload["type"] == "access.request.created"
    assert payload["owner"] == owner.id and payload["data"]["identity"] == agent.id
    assert headers["Tessera-Delivery"] == payload["id"]
    with services.sessions() as s:
        rows = s.query(WebhookDeliveryRow).all()
        assert [(r.status, r.attempts) for r in rows] == [("delivered", 2)]
        assert secret not in str([e.data for e in services.audit.events(s, limit=1000)])
        assert "access.webhook.delivered" in [e.type for e in services.audit.events(s)]


def test_delivery_gives_up_after_max_attempts(services: Services,
                                              make_identity: Callable[..., Any],
                                              receiver: Receiver, clock: FakeClock) -> None:
    owner = make_identity("olga", kind="human")
    with services.sessions() as s:
        services.webhooks.create(s, WebhookCreate(url=receiver.url), actor="test")
        services.webhooks.enqueue(s, "access.request.created", {"x": 1}, owner.id)
        s.commit()
    receiver.statuses = [503] * 20
    for _ in range(services.webhooks.max_attempts):
        services.webhooks.deliver_due(services.sessions)
        clock.advance(3601)
    with services.sessions() as s:
        row = s.query(WebhookDeliveryRow).one()
        assert row.status == "failed" and row.attempts == services.webhooks.max_attempts
        assert [e.type for e in services.audit.events(s, type="access.webhook.failed")]

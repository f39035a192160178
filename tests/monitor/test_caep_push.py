"""CAEP: subscribers receive signed SETs (RFC 8417) by push (RFC 8935), with retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.jwk import KeySet

from tessera.clock import FakeClock
from tessera.container import Services
from tessera.monitor import caep as caep_mod
from tessera.monitor.rfc8417_set import SESSION_REVOKED


class Receiver:
    """A loopback SET receiver; `status` is what it answers."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.status = 202
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                outer.received.append((self.headers.get("content-type", ""), body))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def pump(services: Services) -> dict[str, int]:
    assert services.monitor is not None and services.caep is not None
    with services.sessions() as s:
        services.monitor.process(s)
        s.commit()
    return services.caep.deliver_due(services.sessions)


def test_suspension_is_pushed_as_a_signed_set(
        services: Services, app_client: TestClient, admin_headers: dict[str, str],
        make_identity: Callable[..., Any], receiver: Receiver) -> None:
    agent = make_identity("agent-caep")
    resp = app_client.post("/v1/subscriptions", json={"url": receiver.url,
                                                       "audience": "https://rs.example"},
                           headers=admin_headers)
    assert resp.status_code == 201, resp.text
    assert app_client.post(f"/v1/identities/{agent.id}/suspend", json={"reason": "test"},
                           headers=admin_headers).status_code == 200
    assert pump(services)["delivered"] == 1
    ctype, body = receiver.received[0]
    assert ctype == "application/secevent+jwt"
    obj = jws.deserialize_compact(body, KeySet.import_key_set(services.keys.jwks()))
    claims = json.loads(obj.payload)
    assert obj.headers()["typ"] == "secevent+jwt"
    assert claims["aud"] == "https://rs.example" and "exp" not in claims
    assert claims["sub_id"] == {"format": "iss_sub", "iss": services.tokens.issuer,
                                "sub": agent.id}
    assert SESSION_REVOKED in claims["events"]
    items = app_client.get(f"/v1/subscriptions/{resp.json()['id']}/deliveries",
                           headers=admin_headers).json()["items"]
    assert [d["status"] for d in items] == ["delivered"]


def test_failed_delivery_retries_with_backoff_then_stays_visible(
        services: Services, clock: FakeClock, app_client: TestClient,
        admin_headers: dict[str, str], make_identity: Callable[..., Any],
        receiver: Receiver) -> None:
    agent = make_identity("agent-caep2")
    receiver.status = 503
    sub = app_client.post("/v1/subscriptions", json={"url": receiver.url},
                          headers=admin_headers).json()
    app_client.post(f"/v1/identities/{agent.id}/suspend", headers=admin_headers)
    assert pump(services) == {"delivered": 0, "retry": 1, "failed": 0}
    assert services.caep is not None
    assert services.caep.deliver_due(services.sessions)["retry"] == 0  # backoff: not due yet
    for _ in range(caep_mod.MAX_ATTEMPTS - 1):
        clock.advance(caep_mod.BACKOFF_MAX)
        services.caep.deliver_due(services.sessions)
    assert len(receiver.received) == caep_mod.MAX_ATTEMPTS
    with services.sessions() as s:
        (d,) = services.caep.deliveries(s, subscription=sub["id"])
        assert d.status == "failed" and d.last_error == "HTTP 503"
    # Kept and visible; an administrator can send it again once the receiver is back.
    receiver.status = 202
    with services.sessions() as s:
        services.caep.retry(s, d.id)
        s.commit()
    assert services.caep.deliver_due(services.sessions)["delivered"] == 1


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http://example.com/hook", "not a url"])
def test_rejects_subscription_with_unsafe_url(app_client: TestClient,
                                              admin_headers: dict[str, str], url: str) -> None:
    resp = app_client.post("/v1/subscriptions", json={"url": url}, headers=admin_headers)
    assert resp.status_code == 422

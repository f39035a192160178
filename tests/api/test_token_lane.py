"""/oauth2/token served through its lane (`tessera.api.middleware.Lane`), ahead of the app's
middleware stack: it must answer exactly as the app's own route does, with the request id, the
body limit and the catch-all 500 the stack would have added."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import ISSUER, Actor

from tessera.api.app import create_app
from tessera.container import Services

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def agent(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity("lane-agent", allowed_scopes=["read"])


@pytest.fixture
def routed(services: Services) -> Iterator[TestClient]:
    """The same app without lanes: its FastAPI route and middleware serve the token path."""
    app = create_app(services=services, run_jobs=False)
    app.lanes.clear()
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def _comparable(resp: Any) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in resp.headers.items() if k != "content-length"}
    return resp.status_code, headers, resp.json()


def test_lane_serves_token_requests(app_client: TestClient, agent: Actor) -> None:
    assert ("POST", "/oauth2/token") in app_client.app.lanes  # type: ignore[attr-defined]
    resp = app_client.post("/oauth2/token", data={**agent.form(), "scope": "read"},
                           headers={"x-request-id": "req-lane-1"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    assert resp.headers["x-request-id"] == "req-lane-1"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.json()["token_type"] == "Bearer"


def test_lane_request_id_lands_in_the_audit_event(app_client: TestClient, agent: Actor,
                                                   services: Services) -> None:
    resp = app_client.post("/oauth2/token", data=agent.form(),
                           headers={"x-request-id": "req-audited"})
    assert resp.status_code == 200
    with services.sessions() as s:
        event = services.audit.events(s, type="oauth.token.issued")[-1]
    assert event.request_id == "req-audited"
    assert event.source  # the client's address, as the routed path records it


def test_lane_makes_a_request_id_when_none_or_a_bad_one_is_given(
        app_client: TestClient, agent: Actor) -> None:
    plain = app_client.post("/oauth2/token", data=agent.form())
    bad = app_client.post("/oauth2/token", data=agent.form(),
                          headers={"x-request-id": "no spaces allowed\t"})
    for resp in (plain, bad):
        assert resp.status_code == 200
        rid = resp.headers["x-request-id"]
        assert len(rid) == 16 and rid != "no spaces allowed\t"


@pytest.mark.parametrize("case", ["ok", "no_grant", "bad_assertion", "not_form", "bad_scope",
                                  "unsupported_grant"])
def test_lane_answers_exactly_like_the_routed_path(app_client: TestClient, routed: TestClient,
                                                    agent: Actor, case: str) -> None:
    def request(client: TestClient) -> Any:
        headers = {"x-request-id": f"same-{case}"}
        if case == "ok":
            return client.post("/oauth2/token", data=agent.form(), headers=headers)
        if case == "no_grant":
            return client.post("/oauth2/token", data={"scope": "read"}, headers=headers)
        if case == "bad_assertion":
            return client.post("/oauth2/token", headers=headers, data={
                **agent.form(), "client_assertion": "not.a.jwt"})
        if case == "not_form":
            return client.post("/oauth2/token", json={"grant_type": "client_credentials"},
                               headers=headers)
        if case == "bad_scope":
            return client.post("/oauth2/token", data={**agent.form(), "scope": "admin"},
                               headers=headers)
        return client.post("/oauth2/token", data={**agent.form(), "grant_type": "password"},
                           headers=headers)

    lane, route = _comparable(request(app_client)), _comparable(request(routed))
    assert lane[0] == route[0]
    assert lane[1] == route[1]
    if case == "ok":  # two different tokens, same shape
        assert lane[2].keys() == route[2].keys()
        assert lane[2]["expires_in"] == route[2]["expires_in"]
    else:
        assert lane[2] == route[2] and "error" in lane[2]


def test_lane_refuses_an_announced_oversize_body(app_client: TestClient,
                                                 services: Services) -> None:
    limit = services.settings.max_body_bytes
    resp = app_client.post("/oauth2/token", content=b"a=" + b"x" * limit,
                           headers={**FORM, "x-request-id": "too-big"})
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["x-request-id"] == "too-big"
    assert resp.json()["code"] == "payload_too_large"


def _call_lane(app: Any, body_chunks: list[bytes], headers: list[tuple[bytes, bytes]]
               ) -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive the app as an ASGI server would, the body streamed in chunks."""
    chunks = list(body_chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/oauth2/token", "raw_path":
             b"/oauth2/token", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("tessera.test", 80)}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(
        m.get("body", b"") for m in sent[1:])


def test_lane_refuses_a_streamed_oversize_body_without_writing(
        services: Services, agent: Actor) -> None:
    app = create_app(services=services, run_jobs=False)
    limit = services.settings.max_body_bytes
    with services.sessions() as s:
        before = services.audit.head(s)[0]
    status, headers, body = _call_lane(
        app, [b"grant_type=client_credentials&", b"x=" + b"y" * limit],
        [(b"content-type", b"application/x-www-form-urlencoded")])
    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"
    assert b"x-request-id" in headers
    with services.sessions() as s:
        assert services.audit.head(s)[0] == before  # nothing was processed


def test_lane_streamed_body_in_chunks_is_served(services: Services, agent: Actor) -> None:
    from urllib.parse import urlencode

    app = create_app(services=services, run_jobs=False)
    body = urlencode(agent.form()).encode()
    status, headers, payload = _call_lane(
        app, [body[:40], body[40:90], body[90:]],
        [(b"content-type", b"application/x-www-form-urlencoded")])
    assert status == 200, payload
    assert json.loads(payload)["token_type"] == "Bearer"
    assert headers[b"content-length"] == str(len(payload)).encode()


def test_lane_unexpected_error_is_a_clean_500(app_client: TestClient, agent: Actor,
                                              services: Services,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("internal detail tsr_sk_do_not_leak")

    monkeypatch.setattr(services.tokens, "handle_async", broken)
    resp = app_client.post("/oauth2/token", data=agent.form(),
                           headers={"x-request-id": "boom-1"})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["x-request-id"] == "boom-1"
    body = resp.json()
    assert body["code"] == "internal_error" and body["instance"] == "/oauth2/token"
    assert "do_not_leak" not in resp.text
    assert "client_assertion" not in resp.text
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


def test_other_methods_and_paths_still_go_through_the_app(app_client: TestClient) -> None:
    resp = app_client.get("/oauth2/token", headers={"x-request-id": "get-1"})
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["x-request-id"] == "get-1"
    assert app_client.get("/healthz").status_code == 200


def test_no_lane_when_fastapi_telemetry_is_on(services: Services, agent: Actor) -> None:
    """A lane would bypass FastAPI's per-request spans and metrics: with them on, the token
    path goes through the app like every other route."""
    services.settings.http_telemetry = True
    try:
        app = create_app(services=services, run_jobs=False)
    finally:
        services.settings.http_telemetry = False
    assert app.lanes == {}
    with TestClient(app, base_url=ISSUER) as client:
        assert client.post("/oauth2/token", data=agent.form()).status_code == 200

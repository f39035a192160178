"""The PEP SDK: remote and in-process modes agree; decorator, middleware and mask helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import tessera.sdk.authorizer as sdk_module
from tessera.sdk.authorizer import (
    AuthorizationMiddleware,
    Authorizer,
    Denied,
    apply_mask,
    authorize,
)

POLICY = """
@id("alice-reads") @mask("ssn")
permit (principal == User::"alice", action == Action::"read", resource is Dataset);
"""


@pytest.fixture
def authorizers(app_client: TestClient, admin_headers: dict[str, str]) -> list[Authorizer]:
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"p.cedar": POLICY}})
    assert r.status_code == 201, r.text
    app_client.post("/v1/entities", headers=admin_headers, json={"entities": [
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]})
    tok = admin_headers["Authorization"][7:]
    base = str(app_client.base_url)
    return [Authorizer.remote(base, tok, http=app_client),
            Authorizer.in_process(base, tok, http=app_client)]


def test_remote_and_in_process_agree(authorizers: list[Authorizer]) -> None:
    for az in authorizers:
        ok = az.evaluate({"type": "user", "id": "alice"}, "read",
                         {"type": "Dataset", "id": "d"})
        assert ok.allowed and ok.policies == ["alice-reads"], az.mode
        assert ok.mask_fields() == {"ssn"}
        no = az.evaluate({"type": "user", "id": "alice"}, "write",
                         {"type": "Dataset", "id": "d"})
        assert not no.allowed, az.mode
        ghost = az.evaluate({"type": "user", "id": "ghost"}, "read",
                            {"type": "Dataset", "id": "d"})
        assert not ghost.allowed and ghost.reasons == ["unknown subject"], az.mode


def test_decorator_guards_tool_calls_and_passes_obligations(
        authorizers: list[Authorizer]) -> None:
    az = authorizers[1]

    @authorize(az, action="read", subject={"type": "user", "id": "alice"},
               resource=lambda name, **_: {"type": "Dataset", "id": name})
    def fetch(name: str, decision: Any = None) -> list[dict[str, Any]]:
        return apply_mask([{"name": "x", "ssn": "123"}], decision)

    assert fetch("d") == [{"name": "x", "ssn": "***"}]

    @authorize(az, action="delete", subject={"type": "user", "id": "alice"},
               resource={"type": "Dataset", "id": "d"})
    def drop() -> None:
        raise AssertionError("must not run")

    with pytest.raises(Denied):
        drop()


def test_mask_helper_on_cursor_rows() -> None:
    rows = apply_mask([("a", "a@x", 1)], [{"type": "mask", "fields": ["email"]}],
                      columns=["name", "email", "n"])
    assert rows == [("a", "***", 1)]


def test_middleware_denies_before_the_app(authorizers: list[Authorizer]) -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Callable[..., Any]) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AuthorizationMiddleware(app, authorizers[1], lambda scope: (
        {"type": "user", "id": "alice"}, scope["path"].strip("/"),
        {"type": "Dataset", "id": "d"}))
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(mw({"type": "http", "path": "/write"}, receive, send))
    assert sent[0]["status"] == 403 and calls == []
    asyncio.run(mw({"type": "http", "path": "/read"}, receive, send))
    assert calls == ["/read"]


def test_sdk_imports_nothing_from_the_server() -> None:
    source = Path(sdk_module.__file__).read_text()
    assert "from tessera." not in source and "import tessera" not in source

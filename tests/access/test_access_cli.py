"""`tessera access request|list|approve|deny` through the management API."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tessera.access.schemas import RoleDefine
from tessera.cli import client as cli_client
from tessera.cli.main import app
from tessera.container import Services


class _Borrowed:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def __enter__(self) -> TestClient:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None


def test_cli_request_list_approve_deny(app_client: TestClient, services: Services,
                                       make_identity: Callable[..., Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    owner = make_identity("olive", kind="human")
    agent = make_identity("sync-bot", owner=owner.id)
    with services.sessions() as s:
        services.access.define_role(s, RoleDefine(name="reader", max_duration=7200),
                                    actor="test")
        s.commit()
    monkeypatch.setattr(cli_client.httpx, "Client", lambda **_: _Borrowed(app_client))

    def as_(actor: Any, *args: str) -> Any:
        tok = app_client.post("/oauth2/token", data=actor.form()).json()["access_token"]
        monkeypatch.setenv("TESSERA_TOKEN", tok)
        result = CliRunner().invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    created = as_(agent, "access", "request", "reader", "--duration", "1h", "-j", "nightly sync")
    assert created["status"] == "pending" and created["duration"] == 3600
    listed = as_(owner, "access", "list", "--status", "pending")
    assert [r["id"] for r in listed["items"]] == [created["id"]]
    approved = as_(owner, "access", "approve", created["id"], "--comment", "fine")
    assert approved["status"] == "approved"
    second = as_(agent, "access", "request", "reader", "--duration", "30m", "-j", "again")
    assert as_(owner, "access", "deny", second["id"])["status"] == "denied"
    tok = app_client.post("/oauth2/token", data=agent.form()).json()["access_token"]
    monkeypatch.setenv("TESSERA_TOKEN", tok)
    result = CliRunner().invoke(app, ["access", "request", "reader", "--duration", "3h",
                                      "-j", "too long"])
    assert result.exit_code == 1 and "duration_above_cap" in result.output

"""Key rotation: published before signing, verifying until the last token dies, once per
cluster; the API, the CLI and the scheduled job."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import Actor, make_services
from typer.testing import CliRunner

from oauth_helpers import token
from tessera.api.app import default_jobs
from tessera.clock import FakeClock
from tessera.container import Services
from tessera.keys.models import SigningKeyRow


def kids(services: Services) -> list[str]:
    services.keys.invalidate()
    return [k["kid"] for k in services.keys.jwks()["keys"]]


def header_kid(tok: str) -> str:
    import base64
    import json
    head = tok.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def statuses(services: Services) -> dict[str, str]:
    with services.sessions() as s:
        return {r.kid: r.status for r in s.scalars(select(SigningKeyRow))}


def test_new_key_is_published_before_it_signs_and_old_one_verifies_until_expiry(
        app_client: TestClient, services: Services, clock: FakeClock,
        make_identity: Callable[..., Actor]) -> None:
    agent = make_identity()
    old_kid = services.keys.signer().kid
    old_token = token(app_client, agent).json()["access_token"]
    with services.sessions() as s:
        staged = services.key_rotation.rotate(s)["staged"]
        s.commit()
    assert set(kids(services)) == {old_kid, staged}
    assert header_kid(token(app_client, agent).json()["access_token"]) == old_kid
    # Not yet: the pre-publication delay has not passed.
    with services.sessions() as s:
        assert services.key_rotation.tick(s) == {}
        s.commit()
    clock.advance(services.settings.keys.prepublish_seconds)
    with services.sessions() as s:
        assert services.key_rotation.tick(s) == {"activated": staged}
        s.commit()
    services.keys.invalidate()
    assert header_kid(token(app_client, agent, clock=clock).json()["access_token"]) == staged
    assert statuses(services)[old_kid] == "retired"
    assert set(kids(services)) == {old_kid, staged}
    # The old token still verifies against the published JWKS.
    from tessera.oauth import rfc9068_access_token as at
    at.validate(old_token, services.keys.keyset(), issuer=services.tokens.issuer,
                audience=None, now=clock.now())
    clock.advance(services.settings.tokens.max_ttl + 61)
    assert kids(services) == [staged]
    # Once nothing it signed can still be valid, its private half is destroyed.
    with services.sessions() as s:
        assert services.key_rotation.tick(s) == {"destroyed": [old_kid]}
        s.commit()
        assert s.get(SigningKeyRow, old_kid).private_blob is None
        assert s.get(SigningKeyRow, staged).private_blob is not None


def test_scheduled_job_stages_then_activates_after_interval(services: Services,
                                                            clock: FakeClock) -> None:
    jobs = {j.name: j for j in default_jobs(services)}
    rotate = jobs["rotate-signing-keys"].run
    before = statuses(services)
    rotate()
    assert statuses(services) == before
    clock.advance(timedelta(days=services.settings.keys.rotation_days).total_seconds())
    rotate()
    after = statuses(services)
    assert sorted(after.values()) == ["active", "pending"]
    rotate()  # still inside the pre-publication delay
    assert statuses(services) == after
    clock.advance(services.settings.keys.prepublish_seconds)
    rotate()
    assert sorted(statuses(services).values()) == ["active", "retired"]
    with services.sessions() as s:
        types = [e.type for e in services.audit.events(s, limit=1000)]
    assert "keys.key.staged" in types and "keys.key.rotated" in types


def test_two_nodes_rotate_exactly_once(services: Services, settings: Any, clock: FakeClock,
                                       master_key: bytes) -> None:
    other = make_services(settings, clock, master_key)
    clock.advance(timedelta(days=services.settings.keys.rotation_days).total_seconds())
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def node(svc: Services) -> None:
        try:
            barrier.wait()
            with svc.sessions() as s:
                svc.key_rotation.tick(s)
                s.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(svc,)) for svc in (services, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert not errors
    assert sorted(statuses(services).values()) == ["active", "pending"]


def test_rotate_api_and_list(app_client: TestClient, admin_headers: dict,
                             services: Services, make_identity: Callable[..., Actor]) -> None:
    old = services.keys.signer().kid
    resp = app_client.post("/v1/keys/rotate", headers=admin_headers, json={"now": True})
    assert resp.status_code == 200, resp.text
    new = resp.json()["activated"]
    assert new != old and services.keys.signer().kid == new
    items = app_client.get("/v1/keys", headers=admin_headers).json()["items"]
    assert {i["kid"]: (i["status"], i["published"]) for i in items} == {
        old: ("retired", True), new: ("active", True)}
    plain = make_identity(kind="human")
    resp = app_client.post("/v1/keys/rotate", headers={
        "Authorization": f"Bearer {token(app_client, plain).json()['access_token']}"})
    assert resp.status_code == 403
    resp = app_client.post("/v1/keys/rotate", headers=admin_headers, json={"bogus": 1})
    assert resp.status_code == 422


def test_cli_keys_rotate_and_list(app_client: TestClient, admin_headers: dict,
                                  monkeypatch: Any) -> None:
    from tessera.cli import client as cli_client
    from tessera.cli.main import app

    def call(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        resp = app_client.request(method, path, headers=admin_headers, **kwargs)
        assert resp.status_code < 400, resp.text
        return resp.json()

    monkeypatch.setattr(cli_client.Api, "call", call)
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "rotate", "--json"])
    assert result.exit_code == 0, result.output
    assert '"staged"' in result.output and '"activated": null' in result.output
    result = runner.invoke(app, ["keys", "list", "--json"])
    assert result.exit_code == 0 and '"pending"' in result.output


def test_cli_identity_register_with_issue3_fields(monkeypatch: Any) -> None:
    from tessera.cli import client as cli_client
    from tessera.cli.main import app

    sent: list[Any] = []

    def call(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        sent.append((method, path, kwargs.get("json")))
        return {"ok": True}

    monkeypatch.setattr(cli_client.Api, "call", call)
    result = CliRunner().invoke(app, ["identity", "register", "bot", "--kind", "agent",
                                      "--token-ttl", "600", "--dpop-required",
                                      "--may-act-for", "*"])
    assert result.exit_code == 0, result.output
    body = sent[0][2]
    assert (body["token_ttl"], body["dpop_required"], body["may_act_for"]) == (600, True, ["*"])
    result = CliRunner().invoke(app, ["identity", "update", "bot", "--no-dpop-required"])
    assert result.exit_code == 0 and sent[1][2] == {"dpop_required": False}

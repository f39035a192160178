"""After a full flow, no token, assertion, key or password is anywhere in the audit log."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from sqlalchemy import text

from tessera.audit import scrub
from tessera.audit.export import write_export
from tessera.container import Services


def test_full_flow_leaves_no_secret_in_the_log(
        services: Services, app_client: TestClient, admin_headers: dict[str, str],
        make_identity: Callable[..., Any], master_key: bytes) -> None:
    secrets_seen: list[str] = [admin_headers["Authorization"].split()[1], master_key.decode()]
    agent = make_identity("agent-secrets")
    secrets_seen.append(agent.key.as_dict(private=True)["d"])
    for _ in range(3):
        form = agent.form()
        secrets_seen.append(form["client_assertion"])
        resp = app_client.post("/oauth2/token", data=form)
        assert resp.status_code == 200
        secrets_seen.append(resp.json()["access_token"])
    app_client.post("/oauth2/token", data={**form})  # a replay
    # A wrong key, and a password-like field passed where it does not belong.
    intruder = ECKey.generate_key("P-256", private=True)
    bad = agent.form(_key=intruder)
    secrets_seen.append(bad["client_assertion"])
    secrets_seen.append(intruder.as_dict(private=True)["d"])
    app_client.post("/oauth2/token", data={**bad, "password": "hunter2-very-secret"})
    secrets_seen.append("hunter2-very-secret")
    new_key = ECKey.generate_key("P-256", private=True)
    secrets_seen.append(new_key.as_dict(private=True)["d"])
    app_client.post(f"/v1/identities/{agent.id}/credentials",
                    json={"jwk": new_key.as_dict(private=True)}, headers=admin_headers)
    app_client.post(f"/v1/identities/{agent.id}/suspend", json={"reason": "done"},
                    headers=admin_headers)
    # Every column of every audit row, the alerts, and a full export.
    with services.engine.connect() as conn:
        dump = json.dumps([list(map(str, r)) for table in ("audit_events", "monitor_alerts")
                           for r in conn.execute(text(f"SELECT * FROM {table}"))])
    buf = io.StringIO()
    with services.sessions() as s:
        write_export(s, services.clock, services.keys.jwks(), buf)
        assert s.execute(text("SELECT count(*) FROM audit_events")).scalar_one() > 10
    dump += buf.getvalue()
    for secret in secrets_seen:
        assert secret not in dump
        assert secret[:40] not in dump


def test_scrub_redacts_secret_looking_values() -> None:
    data = {"note": "token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln here",
            "password": "pw", "nested": [{"refresh_token": "x"}, "tsr_rt_abcdefghijkl"],
            "pem": "-----BEGIN EC PRIVATE KEY-----"}
    out = scrub(data)
    assert "eyJ" not in json.dumps(out) and "tsr_rt_" not in json.dumps(out)
    assert out["password"] == "[redacted]" and out["nested"][0]["refresh_token"] == "[redacted]"
    assert "PRIVATE KEY" not in out["pem"]

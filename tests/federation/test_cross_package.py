"""Cross-package connections made in the container (tessera.wiring)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from tests.conftest import Actor

from tessera.container import Services

RISKY = """
@id("agents-read")
permit (principal is Agent, action == Action::"read", resource is Dataset);

@id("high-risk-reads-nothing")
@reason("risk above 50")
forbid (principal, action, resource) when { context.risk > 50 };
"""
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def test_monitor_risk_reaches_policy_context(app_client: TestClient, services: Services,
                                             admin_headers: dict[str, str],
                                             make_identity: Callable[..., Actor]) -> None:
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"main.cedar": RISKY}})
    assert r.status_code == 201, r.text
    r = app_client.post("/v1/resources", headers=admin_headers,
                        json={"type": "Dataset", "id": "d1", "attributes": {}})
    assert r.status_code == 201, r.text
    bot = make_identity("risky-bot")
    body = {"subject": {"type": "identity", "id": bot.id}, "action": {"name": "read"},
            "resource": {"type": "Dataset", "id": "d1"}}
    assert app_client.post("/access/v1/evaluation", headers=admin_headers,
                           json=body).json()["decision"] is True
    assert services.monitor is not None
    with services.sessions() as s:
        services.monitor.set_risk(s, bot.id, 90)
        s.commit()
    denied = app_client.post("/access/v1/evaluation", headers=admin_headers, json=body).json()
    assert denied["decision"] is False
    assert "high-risk-reads-nothing" in denied["context"]["policies"]


def _register_issuer(app_client: TestClient, admin_headers: dict[str, str],
                     issuer: Any) -> None:
    resp = app_client.post("/v1/federation/issuers", headers=admin_headers, json={
        "name": "k8s", "issuer": issuer.url, "audiences": ["tessera"],
        "rules": [{"match": {"sub": "system:serviceaccount:ml:trainer"},
                   "identity": "pipeline/trainer"}]})
    assert resp.status_code == 201, resp.text


def test_federated_subject_token_can_be_exchanged(fed_services: Services,
                                                  app_client: TestClient,
                                                  admin_headers: dict[str, str],
                                                  oidc_issuer: Any,
                                                  make_identity: Callable[..., Actor]) -> None:
    trainer = make_identity("trainer", kind="pipeline", allowed_scopes=["train", "read"])
    helper = make_identity("helper-agent", allowed_scopes=["read"], may_act_for=[trainer.id])
    _register_issuer(app_client, admin_headers, oidc_issuer)
    form: dict[str, Any] = {**helper.form(), "grant_type": EXCHANGE,
                            "subject_token": oidc_issuer.token(),
                            "subject_token_type": JWT_TYPE}
    resp = app_client.post("/oauth2/token", data=form)
    assert resp.status_code == 200, resp.text
    claims = fed_services.tokens.authenticate_bearer(resp.json()["access_token"])
    assert claims["sub"] == trainer.id and claims["scope"] == "read"
    assert claims["act"]["client_id"] == helper.id


def test_federated_subject_token_refusals(fed_services: Services, app_client: TestClient,
                                          admin_headers: dict[str, str],
                                          oidc_issuer: Any, other_issuer: Any,
                                          make_identity: Callable[..., Actor]) -> None:
    trainer = make_identity("trainer", kind="pipeline", allowed_scopes=["read"])
    helper = make_identity("helper-agent", allowed_scopes=["read"], may_act_for=[trainer.id])
    stranger = make_identity("stranger", allowed_scopes=["read"])
    _register_issuer(app_client, admin_headers, oidc_issuer)
    cases = {
        "rejects an unregistered issuer": (helper, other_issuer.token()),
        "rejects an expired platform token": (helper, oidc_issuer.token(
            iat=int(time.time()) - 700, nbf=int(time.time()) - 700,
            exp=int(time.time()) - 100)),
        "rejects an actor without delegation rights": (stranger, oidc_issuer.token()),
    }
    for case, (actor, subject_token) in cases.items():
        form = {**actor.form(), "grant_type": EXCHANGE, "subject_token": subject_token,
                "subject_token_type": JWT_TYPE}
        resp = app_client.post("/oauth2/token", data=form)
        assert resp.status_code == 400, (case, resp.text)
        assert resp.json()["error"] in ("invalid_request", "invalid_grant",
                                        "unauthorized_client"), case
        assert "access_token" not in resp.json(), case


def test_risk_suspension_revokes_token_families(services: Services, app_client: TestClient,
                                                make_identity: Callable[..., Actor]) -> None:
    agent = make_identity("offline-bot", allowed_scopes=["read", "offline_access"])
    resp = app_client.post("/oauth2/token", data={**agent.form(),
                                                  "scope": "read offline_access"})
    assert resp.status_code == 200, resp.text
    refresh = resp.json().get("refresh_token")
    assert refresh, resp.json()
    assert services.monitor is not None
    with services.sessions() as s:
        services.monitor.apply_response(s, agent.id, "suspend", 85, 90, ["test"])
        s.commit()
    again = app_client.post("/oauth2/token", data={
        **agent.form(), "grant_type": "refresh_token", "refresh_token": refresh})
    assert again.status_code in (400, 401) and "access_token" not in again.json()
    with services.sessions() as s:
        applied = services.audit.events(s, type="monitor.response.applied")[-1]
        assert applied.data.get("tokens_revoked", 0) >= 1

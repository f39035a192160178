"""Management API: /v1/identities and credentials, problem+json errors, admin-only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from tests.conftest import Actor

from tessera.clock import FakeClock
from tessera.container import Services


def agent_body(clock: FakeClock, owner_id: str | None, **kw: Any) -> dict[str, Any]:
    body = {"name": "planner", "kind": "agent", "owner": owner_id, "purpose": "plan trips",
            "expires_at": (clock.now() + timedelta(days=10)).isoformat(),
            "attributes": {"team": "travel", "clearance": 2}}
    body.update(kw)
    return body


def problem(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["detail"]
    if code:
        assert body["code"] == code
    return body


def identity_count(services: Services) -> int:
    with services.sessions() as s:
        return len(services.identities.list(s, limit=500)[0])


def test_full_lifecycle(app_client: TestClient, admin_headers: dict[str, str], admin: Actor,
                        clock: FakeClock) -> None:
    resp = app_client.post("/v1/identities", json=agent_body(clock, admin.id),
                           headers=admin_headers)
    assert resp.status_code == 201, resp.text
    ident = resp.json()
    assert ident["client_id"] == ident["id"]
    assert ident["spiffe_id"] == "spiffe://example.org/agent/planner"
    iid = ident["id"]
    assert app_client.get(f"/v1/identities/{iid}", headers=admin_headers).json()["name"] == \
        "planner"
    assert app_client.get("/v1/identities/planner", headers=admin_headers).json()["id"] == iid
    patched = app_client.patch(f"/v1/identities/{iid}", json={"purpose": "plan"},
                               headers=admin_headers).json()
    assert patched["purpose"] == "plan" and patched["attributes"]["team"] == "travel"
    key = ECKey.generate_key("P-256", private=True)
    cred = app_client.post(f"/v1/identities/{iid}/credentials",
                           json={"jwk": key.as_dict(private=False)}, headers=admin_headers)
    assert cred.status_code == 201 and cred.json()["kid"] == key.thumbprint()
    assert "d" not in cred.json()["jwk"]
    creds = app_client.get(f"/v1/identities/{iid}/credentials", headers=admin_headers).json()
    assert [c["id"] for c in creds["items"]] == [cred.json()["id"]]
    assert app_client.post(f"/v1/identities/{iid}/suspend", json={"reason": "check"},
                           headers=admin_headers).json()["status"] == "suspended"
    assert app_client.post(f"/v1/identities/{iid}/resume",
                           headers=admin_headers).json()["status"] == "active"
    revoked = app_client.delete(f"/v1/identities/{iid}/credentials/{cred.json()['id']}",
                                headers=admin_headers)
    assert revoked.json()["status"] == "revoked"
    gone = app_client.post(f"/v1/identities/{iid}/decommission", json={"reason": "done"},
                           headers=admin_headers).json()
    assert gone["status"] == "decommissioned" and gone["status_reason"] == "done"
    problem(app_client.post(f"/v1/identities/{iid}/resume", headers=admin_headers), 409)


def test_list_paginates(app_client: TestClient, admin_headers: dict[str, str], admin: Actor,
                        clock: FakeClock) -> None:
    for i in range(3):
        clock.advance(0.01)
        assert app_client.post("/v1/identities", json=agent_body(clock, admin.id, name=f"b{i}"),
                               headers=admin_headers).status_code == 201
    page = app_client.get("/v1/identities?kind=agent&limit=2", headers=admin_headers).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = app_client.get(f"/v1/identities?kind=agent&limit=2&cursor={page['next_cursor']}",
                          headers=admin_headers).json()
    assert [i["name"] for i in page["items"] + rest["items"]] == ["b0", "b1", "b2"]
    assert rest["next_cursor"] is None
    problem(app_client.get("/v1/identities?kind=robot", headers=admin_headers), 422)
    problem(app_client.get("/v1/identities?limit=0", headers=admin_headers), 422)


def test_requires_bearer_token(app_client: TestClient) -> None:
    resp = app_client.get("/v1/identities")
    problem(resp, 401, "unauthenticated")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    problem(app_client.get("/v1/identities", headers={"Authorization": "Bearer x.y.z"}), 401)
    problem(app_client.get("/v1/identities", headers={"Authorization": "Basic abc"}), 401)


def test_non_admin_is_forbidden_and_audited(app_client: TestClient, services: Services,
                                            make_identity: Callable[..., Actor]) -> None:
    agent = make_identity("worker")
    token = app_client.post("/oauth2/token", data=agent.form()).json()["access_token"]
    problem(app_client.get("/v1/identities", headers={"Authorization": f"Bearer {token}"}),
            403, "forbidden")
    with services.sessions() as s:
        denied = services.audit.events(s, type="api.request.denied")
        assert denied and denied[-1].actor == agent.id


def test_token_of_suspended_admin_stops_working(app_client: TestClient, services: Services,
                                                admin_headers: dict[str, str],
                                                admin: Actor) -> None:
    with services.sessions() as s:
        services.identities.suspend(s, admin.id, actor="t")
        s.commit()
    problem(app_client.get("/v1/identities", headers=admin_headers), 401)


def test_expired_token_is_refused(app_client: TestClient, admin_headers: dict[str, str],
                                  clock: FakeClock) -> None:
    clock.advance(seconds=901 + 30)
    problem(app_client.get("/v1/identities", headers=admin_headers), 401)


def test_token_for_another_audience_is_refused(app_client: TestClient, services: Services,
                                               make_identity: Callable[..., Actor]) -> None:
    admin2 = make_identity("root2", kind="human", roles=("admin",),
                           allowed_audiences=["https://api.example.com"])
    token = app_client.post("/oauth2/token", data={
        **admin2.form(), "resource": "https://api.example.com"}).json()["access_token"]
    problem(app_client.get("/v1/identities", headers={"Authorization": f"Bearer {token}"}), 401)


@pytest.mark.parametrize("case, body, status", [
    ("rejects malformed JSON", b"{not json", 400),
    ("rejects wrong types", b'{"name": 5, "kind": "agent"}', 422),
    ("rejects unknown fields", b'{"name": "x", "kind": "human", "colour": "red"}', 422),
    ("rejects unknown kind", b'{"name": "x", "kind": "robot"}', 422),
    ("rejects a non-object", b'[1, 2]', 422),
    ("rejects naive expiry", b'{"name": "x", "kind": "human", "expires_at": "2030-01-01T00:00"}',
     422),
])
def test_register_bad_input(app_client: TestClient, admin_headers: dict[str, str],
                            services: Services, case: str, body: bytes, status: int) -> None:
    before = identity_count(services)
    problem(app_client.post("/v1/identities", content=body,
                            headers={**admin_headers, "content-type": "application/json"}),
            status)
    assert identity_count(services) == before


def test_register_rule_errors_name_the_rule(app_client: TestClient, admin: Actor,
                                            admin_headers: dict[str, str],
                                            clock: FakeClock, services: Services) -> None:
    before = identity_count(services)
    body = problem(app_client.post("/v1/identities", json=agent_body(clock, None),
                                   headers=admin_headers), 422, "owner_required")
    assert "owner" in body["detail"]
    far = (clock.now() + timedelta(days=365)).isoformat()
    problem(app_client.post("/v1/identities", json=agent_body(clock, admin.id, expires_at=far),
                            headers=admin_headers), 422, "expiry_too_far")
    assert identity_count(services) == before
    assert app_client.post("/v1/identities", json=agent_body(clock, admin.id),
                           headers=admin_headers).status_code == 201
    problem(app_client.post("/v1/identities", json=agent_body(clock, admin.id),
                            headers=admin_headers), 409, "conflict")


def test_oversize_body_is_refused(app_client: TestClient, admin_headers: dict[str, str]) -> None:
    big = {"name": "x", "kind": "human", "attributes": {"blob": "x" * 70_000}}
    problem(app_client.post("/v1/identities", json=big, headers=admin_headers), 413,
            "payload_too_large")


@pytest.mark.parametrize("case, jwk", [
    ("rejects private key", ECKey.generate_key("P-256", private=True).as_dict(private=True)),
    ("rejects symmetric key", {"kty": "oct", "k": "c2VjcmV0"}),
    ("rejects garbage", {"kty": "EC", "crv": "P-256", "x": 1, "y": None}),
    ("rejects unknown curve", {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}),
])
def test_bad_jwk_is_refused_and_not_echoed(app_client: TestClient, admin: Actor,
                                           admin_headers: dict[str, str], case: str,
                                           jwk: dict[str, Any]) -> None:
    resp = app_client.post(f"/v1/identities/{admin.id}/credentials", json={"jwk": jwk},
                           headers=admin_headers)
    body = problem(resp, 422)
    if "d" in jwk:
        assert jwk["d"] not in resp.text
    creds = app_client.get(f"/v1/identities/{admin.id}/credentials",
                           headers=admin_headers).json()["items"]
    assert len(creds) == 1  # only the admin's own key
    assert body["code"] == "validation_failed"


def test_unknown_identity_is_404(app_client: TestClient, admin_headers: dict[str, str]) -> None:
    problem(app_client.get("/v1/identities/idn_missing", headers=admin_headers), 404)
    problem(app_client.post("/v1/identities/idn_missing/suspend", headers=admin_headers), 404)
    problem(app_client.delete("/v1/identities/idn_missing/credentials/crd_x",
                              headers=admin_headers), 404)


def test_openapi_is_published(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert "/v1/identities" in paths and "/v1/identities/{identity_id}/decommission" in paths


def test_request_id_is_echoed(app_client: TestClient, admin_headers: dict[str, str],
                              services: Services) -> None:
    resp = app_client.post("/v1/identities", json={"name": "carol", "kind": "human"},
                           headers={**admin_headers, "X-Request-ID": "req-123"})
    assert resp.headers["x-request-id"] == "req-123"
    with services.sessions() as s:
        event = services.audit.events(s, type="identity.identity.registered")[-1]
        assert event.request_id == "req-123" and event.source

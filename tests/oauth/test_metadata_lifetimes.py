"""Metadata advertises exactly what is supported; lifetimes by kind and identity; scopes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tests.conftest import ISSUER, Actor

from oauth_helpers import claims_of, token
from tessera.config import TokenSettings
from tessera.container import Services


def test_metadata_is_exact(app_client: TestClient) -> None:
    meta = app_client.get("/.well-known/oauth-authorization-server").json()
    assert meta["grant_types_supported"] == sorted([
        "client_credentials", "refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange"])
    methods = ["private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"]
    assert meta["token_endpoint_auth_methods_supported"] == methods
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert meta["introspection_endpoint"] == f"{ISSUER}/oauth2/introspect"
    assert meta["revocation_endpoint"] == f"{ISSUER}/oauth2/revoke"
    assert meta["introspection_endpoint_auth_methods_supported"] == methods
    assert meta["revocation_endpoint_auth_methods_supported"] == methods
    assert meta["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA", "PS256", "RS256"]
    assert not {"none", "HS256"} & set(meta["dpop_signing_alg_values_supported"])
    assert not {"authorization_endpoint", "device_authorization_endpoint"} & meta.keys()
    # Every advertised endpoint answers (with an OAuth error, not a 404).
    for key in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        path = meta[key].removeprefix(ISSUER)
        resp = app_client.post(path, data={})
        assert resp.status_code in (400, 401) and "error" in resp.json()


def test_default_lifetime_is_15_minutes(app_client: TestClient,
                                        make_identity: Callable[..., Actor]) -> None:
    body = token(app_client, make_identity()).json()
    assert body["expires_in"] == 900
    claims = claims_of(body["access_token"])
    assert claims["exp"] - claims["iat"] == 900


def test_lifetime_per_kind_and_per_identity(app_client: TestClient, services: Services,
                                            make_identity: Callable[..., Actor]) -> None:
    services.tokens._settings = services.tokens._settings.model_copy(
        update={"ttl_by_kind": {"model": 300}})
    assert token(app_client, make_identity(kind="model")).json()["expires_in"] == 300
    assert token(app_client, make_identity(kind="agent")).json()["expires_in"] == 900
    assert token(app_client, make_identity(kind="model", token_ttl=120)
                 ).json()["expires_in"] == 120


def test_lifetime_never_above_an_hour(admin_headers: dict, app_client: TestClient) -> None:
    with pytest.raises(ValidationError):
        TokenSettings(default_ttl=3601)
    with pytest.raises(ValidationError):
        TokenSettings(ttl_by_kind={"agent": 7200})
    resp = app_client.get("/v1/identities", headers=admin_headers)
    owner = next(i["id"] for i in resp.json()["items"] if i["kind"] == "human")
    resp = app_client.post("/v1/identities", headers=admin_headers, json={
        "name": "too-long", "kind": "agent", "owner": owner, "purpose": "x",
        "expires_at": "2099-01-01T00:00:00Z", "token_ttl": 3601})
    assert resp.status_code == 422


def test_identity_fields_round_trip_through_api(admin_headers: dict,
                                                app_client: TestClient) -> None:
    resp = app_client.get("/v1/identities", headers=admin_headers)
    owner = next(i["id"] for i in resp.json()["items"] if i["kind"] == "human")
    from datetime import datetime, timedelta
    expiry = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    resp = app_client.post("/v1/identities", headers=admin_headers, json={
        "name": "delegate", "kind": "agent", "owner": owner, "purpose": "x",
        "expires_at": expiry, "token_ttl": 600, "dpop_required": True,
        "may_act_for": ["*"]})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["token_ttl"], body["dpop_required"], body["may_act_for"]) == (600, True, ["*"])
    resp = app_client.patch(f"/v1/identities/{body['id']}", headers=admin_headers,
                            json={"token_ttl": None, "dpop_required": False})
    assert resp.status_code == 200
    assert (resp.json()["token_ttl"], resp.json()["dpop_required"]) == (None, False)


def test_scope_and_audience_outside_allowed_are_refused(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"], allowed_audiences=["https://a.example"])
    assert token(app_client, agent, scope="write").json()["error"] == "invalid_scope"
    assert token(app_client, agent, resource="https://b.example").json()["error"] == \
        "invalid_target"
    ok = token(app_client, agent, resource="https://a.example", scope="read")
    assert claims_of(ok.json()["access_token"])["aud"] == "https://a.example"

"""RFC 6749 §2.3: a client uses one authentication method per request; a second one is
`invalid_request` (§5.2), audited, on the token, introspection and revocation endpoints."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import Actor

from tessera.audit import RequestContext
from tessera.container import Services
from tessera.oauth.service import TokenRequest, presented_auth_methods

BASIC = {"Authorization": "Basic " + base64.b64encode(b"client:secret").decode()}

# (case, extra form fields, extra headers)
TWO_METHODS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("rejects an assertion when HTTP Basic is also sent", {}, BASIC),
    ("rejects an assertion when client_secret is also in the form",
     {"client_secret": "s3cret"}, {}),
    ("rejects an assertion when both Basic and client_secret are also sent",
     {"client_secret": "s3cret"}, BASIC),
]
ENDPOINTS = ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"]


def _form(actor: Actor, endpoint: str, extra: dict[str, str]) -> dict[str, str]:
    form = actor.form()
    if endpoint != "/oauth2/token":
        form.pop("grant_type")
        form["token"] = "not-a-token"
    return form | extra


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_two_client_authentication_methods_are_invalid_request_and_audited(
        endpoint: str, app_client: TestClient, services: Services,
        make_identity: Callable[..., Actor]) -> None:
    actor = make_identity()
    for case, extra, headers in TWO_METHODS:
        resp = app_client.post(endpoint, data=_form(actor, endpoint, extra), headers=headers)
        assert resp.status_code == 400, (case, resp.text)
        assert resp.json()["error"] == "invalid_request", case
        assert "more than one client authentication method" in \
            resp.json()["error_description"], case
        assert "s3cret" not in resp.text and "secret" not in resp.text.replace(
            "client_secret_", ""), case
        with services.sessions() as s:
            refused = services.audit.events(s, type="oauth.token.refused")[-1]
        assert refused.data["error"] == "invalid_request", case
        assert "more than one client authentication method" in refused.reasons[0], case
        assert "s3cret" not in str(refused.data) + str(refused.reasons), case
    # One method alone is served as before.
    resp = app_client.post(endpoint, data=_form(actor, endpoint, {}))
    assert resp.status_code == 200, resp.text


def test_basic_and_client_secret_without_an_assertion_are_invalid_request(
        app_client: TestClient) -> None:
    resp = app_client.post("/oauth2/token", headers=BASIC,
                           data={"grant_type": "client_credentials", "client_id": "c",
                                 "client_secret": "s"})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


def _req(form: dict[str, str], headers: dict[str, str] | None = None,
         cert: bytes | None = None) -> Any:
    from datetime import UTC, datetime
    return TokenRequest(form=form, resources=[], ctx=RequestContext(),
                        now=datetime.now(UTC), headers=headers or {}, client_cert=cert)


ASSERTION = {"client_assertion_type": "x", "client_assertion": "y"}


@pytest.mark.parametrize(("case", "req", "methods"), [
    ("an assertion alone is one method", _req(ASSERTION), ["private_key_jwt"]),
    ("a certificate beside an assertion only binds the token (RFC 8705 §3, §4)",
     _req(ASSERTION, cert=b"der"), ["private_key_jwt"]),
    ("a certificate alone is tls_client_auth", _req({"client_id": "c"}, cert=b"der"),
     ["tls_client_auth"]),
    ("rejects a certificate when HTTP Basic is also sent",
     _req({}, {"authorization": "basic Zm9vOmJhcg=="}, b"der"),
     ["client_secret_basic", "tls_client_auth"]),
    ("rejects a certificate when client_secret is also in the form",
     _req({"client_secret": "s"}, cert=b"der"), ["client_secret_post", "tls_client_auth"]),
    ("a bearer Authorization header is no client authentication",
     _req(ASSERTION, {"authorization": "Bearer abc"}), ["private_key_jwt"]),
])
def test_presented_methods(case: str, req: Any, methods: list[str]) -> None:
    assert presented_auth_methods(req) == methods, case

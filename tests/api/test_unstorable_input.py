"""NUL and other unstorable input: refused as the protocol's own 4xx on SQLite and PostgreSQL,
never a 500 (PostgreSQL refuses NUL in text), and a refused client authentication is audited."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.conftest import ISSUER, Actor

from tessera.container import Services
from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE as JWT_BEARER

NUL = "a\x00b"
Q = "a%00b"  # NUL in a path segment or a query value, percent-encoded


def _client(app_client: TestClient) -> TestClient:
    # A 500 must come back as a response, not as the server's exception.
    return TestClient(app_client.app, base_url=ISSUER, raise_server_exceptions=False)


def _federated_token(iss: str) -> str:
    key = ECKey.generate_key("P-256", private=True)
    now = int(time.time())
    return jwt.encode({"alg": "ES256", "kid": "k1"},
                      {"iss": iss, "sub": "x", "aud": "tessera", "iat": now, "exp": now + 60},
                      key)


# (case, endpoint, form builder) — every string a client sends to the three endpoints.
OAUTH_CASES: list[tuple[str, str, Callable[[Actor], dict[str, str]]]] = [
    *[(f"rejects {what} when the assertion's {what} holds NUL", endpoint, builder)
      for endpoint in ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke")
      for what, builder in (
          ("iss", lambda a: a.form(iss=NUL, sub=NUL)),
          ("kid", lambda a: a.form(_header={"kid": NUL})),
          ("jti", lambda a: a.form(jti=NUL)),
          ("aud", lambda a: a.form(aud=NUL)),
          ("client_id", lambda a: {**a.form(), "client_id": NUL}),
          ("client_assertion_type", lambda a: {**a.form(), "client_assertion_type": NUL}),
          ("client_assertion", lambda a: {**a.form(), "client_assertion": NUL}),
      )],
    ("rejects a token request when scope holds NUL", "/oauth2/token",
     lambda a: a.form() | {"scope": NUL}),
    ("rejects a token request when resource holds NUL", "/oauth2/token",
     lambda a: a.form() | {"resource": NUL}),
    ("rejects a token request when grant_type holds NUL", "/oauth2/token",
     lambda a: a.form() | {"grant_type": NUL}),
    ("rejects a jwt-bearer grant when the assertion holds NUL", "/oauth2/token",
     lambda a: {"grant_type": JWT_BEARER, "assertion": NUL}),
    ("rejects a jwt-bearer grant when the assertion's iss holds NUL", "/oauth2/token",
     lambda a: {"grant_type": JWT_BEARER, "assertion": _federated_token(NUL)}),
    ("rejects a refresh grant when refresh_token holds NUL", "/oauth2/token",
     lambda a: a.form() | {"grant_type": "refresh_token", "refresh_token": "tsr_rt_" + NUL}),
    ("rejects a token exchange when subject_token holds NUL", "/oauth2/token",
     lambda a: a.form() | {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                           "subject_token": NUL,
                           "subject_token_type":
                               "urn:ietf:params:oauth:token-type:access_token"}),
]


def test_oauth_endpoints_refuse_nul_in_every_input_and_audit_it(
        app_client: TestClient, services: Services, make_identity: Callable[..., Actor]
) -> None:
    client = _client(app_client)
    actor = make_identity()
    failures = []
    for case, endpoint, builder in OAUTH_CASES:
        with services.sessions() as s:
            before = len(services.audit.events(s, type="oauth.token.refused"))
        form = builder(actor)
        if endpoint != "/oauth2/token":
            form = {k: v for k, v in form.items() if k != "grant_type"} | {"token": "x"}
        resp = client.post(endpoint, data=form)
        with services.sessions() as s:
            after = len(services.audit.events(s, type="oauth.token.refused"))
        if not 400 <= resp.status_code < 500 or "error" not in resp.json():
            failures.append(f"{case} ({endpoint}): {resp.status_code} {resp.text[:120]}")
        elif after != before + 1:
            failures.append(f"{case} ({endpoint}): refusal not audited")
    assert not failures, "\n".join(failures)


def test_nul_in_the_assertion_iss_is_invalid_client_with_its_reason_audited(
        app_client: TestClient, services: Services, make_identity: Callable[..., Actor]
) -> None:
    resp = _client(app_client).post("/oauth2/token",
                                    data=make_identity().form(iss=NUL, sub=NUL))
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    with services.sessions() as s:
        refused = services.audit.events(s, type="oauth.token.refused")[-1]
    assert refused.outcome == "failure"
    assert refused.reasons == ["iss is not a possible client id"]
    assert "\x00" not in (refused.actor or "")


def _management_cases(admin: Actor) -> list[tuple[str, str, str, Any]]:
    """(case, method, url, JSON body) — path parameters, query filters and JSON strings."""
    paths = [
        ("GET", "/v1/identities/{x}"), ("PATCH", "/v1/identities/{x}"),
        ("POST", "/v1/identities/{x}/suspend"), ("POST", "/v1/identities/{x}/resume"),
        ("POST", "/v1/identities/{x}/decommission"),
        ("GET", "/v1/identities/{x}/credentials"), ("POST", "/v1/identities/{x}/credentials"),
        ("DELETE", "/v1/identities/{x}/credentials/{x}"),
        ("GET", "/v1/federation/issuers/{x}"), ("PATCH", "/v1/federation/issuers/{x}"),
        ("DELETE", "/v1/federation/issuers/{x}"),
        ("GET", "/v1/resources/{x}/{x}"), ("DELETE", "/v1/resources/{x}/{x}"),
        ("DELETE", "/v1/entities/{x}/{x}"), ("GET", "/v1/policies/{x}/schema"),
        ("GET", "/v1/access-requests/{x}"), ("POST", "/v1/access-requests/{x}/approve"),
        ("GET", "/v1/approvals/{x}"), ("POST", "/v1/approvals/{x}/deny"),
        ("POST", "/v1/alerts/{x}/resolve"), ("GET", "/v1/risk/{x}"),
        ("POST", "/v1/responses/{x}/undo"), ("GET", "/v1/secrets/leases/{x}"),
        ("POST", "/v1/secrets/creds/{x}"), ("DELETE", "/v1/subscriptions/{x}"),
        ("GET", "/v1/subscriptions/{x}/deliveries"),
    ]
    queries = [
        ("/v1/identities", "owner"), ("/v1/identities", "cursor"),
        ("/v1/audit/events", "type"), ("/v1/audit/events", "subject"),
        ("/v1/audit/events", "identity"), ("/v1/audit/events", "outcome"),
        ("/v1/audit/events", "request_id"), ("/v1/alerts", "identity"),
        ("/v1/alerts", "detector"), ("/v1/alerts", "cursor"), ("/v1/resources", "type"),
        ("/v1/resources", "cursor"), ("/v1/entities", "type"), ("/v1/entities", "cursor"),
        ("/v1/responses", "identity"), ("/v1/secrets/leases", "identity"),
        ("/v1/ca/certificates", "identity"), ("/v1/access-requests", "identity"),
    ]
    key = ECKey.generate_key("P-256", private=True).as_dict(private=False)
    bodies: list[tuple[str, str, str, Any]] = [
        ("name", "POST", "/v1/identities", {"name": NUL, "kind": "human"}),
        ("purpose", "POST", "/v1/identities",
         {"name": "n1", "kind": "human", "purpose": NUL}),
        ("an attribute key", "POST", "/v1/identities",
         {"name": "n2", "kind": "human", "attributes": {NUL: 1}}),
        ("an attribute value", "POST", "/v1/identities",
         {"name": "n3", "kind": "human", "attributes": {"team": NUL}}),
        ("a lone surrogate", "POST", "/v1/identities",
         {"name": "n4", "kind": "human", "purpose": "\ud800"}),
        ("owner", "POST", "/v1/identities", {"name": "n5", "kind": "agent", "owner": NUL}),
        ("purpose", "PATCH", f"/v1/identities/{admin.id}", {"purpose": NUL}),
        ("the jwk's kid", "POST", f"/v1/identities/{admin.id}/credentials",
         {"jwk": key | {"kid": NUL}}),
        ("a reason", "POST", f"/v1/identities/{admin.id}/suspend", {"reason": NUL}),
        ("an issuer name", "POST", "/v1/federation/issuers",
         {"name": NUL, "issuer": "https://issuer.example", "audiences": ["t"], "rules": []}),
        ("a resource id", "POST", "/v1/resources", {"type": "Dataset", "id": NUL}),
        ("an entity id", "POST", "/v1/entities",
         {"entities": [{"uid": {"type": "Agent", "id": NUL}, "attrs": {}, "parents": []}]}),
        ("a policy file", "POST", "/v1/policies/default",
         {"files": {"a.cedar": "permit(principal, action, resource);" + NUL}}),
        ("a role name", "PUT", "/v1/access-roles/r1", {"name": NUL}),
        ("a risk reason", "PUT", f"/v1/risk/{admin.id}", {"risk": 1, "reason": NUL}),
        ("a credentials identity", "POST", "/v1/secrets/creds/t1", {"identity": NUL}),
        ("an access request", "POST", "/v1/access-requests",
         {"role": NUL, "justification": NUL}),
    ]
    return [
        *[(f"rejects {m} {p} when a path parameter holds NUL", m, p.replace("{x}", Q),
           {} if m in ("POST", "PATCH", "PUT") else None) for m, p in paths],
        *[(f"rejects GET {p} when the {q} filter holds NUL", "GET", f"{p}?{q}={Q}", None)
          for p, q in queries],
        *[(f"rejects {m} {p} when {what} holds NUL", m, p, body)
          for what, m, p, body in bodies],
    ]


def test_management_api_refuses_nul_in_paths_filters_and_bodies(
        app_client: TestClient, admin_headers: dict[str, str], admin: Actor,
        services: Services) -> None:
    client = _client(app_client)
    failures = []
    for case, method, url, body in _management_cases(admin):
        # Escaped as JSON on the wire (\u0000, \ud800), as any client sends them.
        content = None if body is None else json.dumps(body).encode()
        resp = client.request(method, url, content=content,
                              headers=admin_headers | {"content-type": "application/json"})
        if not 400 <= resp.status_code < 500 or \
                not resp.headers["content-type"].startswith("application/problem+json"):
            failures.append(f"{case}: {resp.status_code} {resp.text[:120]}")
        elif "\x00" in resp.text or "\\u0000" in resp.text:
            failures.append(f"{case}: the answer echoes the NUL")
    assert not failures, "\n".join(failures)
    with services.sessions() as s:  # nothing with a NUL was stored (SQLite could have)
        names = [r.name for r in services.identities.list(s, limit=500)[0]]
    assert not any("\x00" in n or n.startswith("n") for n in names)


def test_nul_in_a_path_is_not_found_and_in_a_filter_or_body_is_validation_failed(
        app_client: TestClient, admin_headers: dict[str, str]) -> None:
    client = _client(app_client)
    resp = client.get(f"/v1/identities/{Q}", headers=admin_headers)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    resp = client.get(f"/v1/identities?owner={Q}", headers=admin_headers)
    assert resp.status_code == 422 and resp.json()["errors"][0]["loc"] == ["query", "owner"]
    resp = client.post("/v1/identities", headers=admin_headers,
                       json={"name": "x", "kind": "human", "attributes": {"t": [1, NUL]}})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["loc"] == ["body", "attributes", "t", "1"]
    resp = client.post("/v1/identities", headers=admin_headers,
                       content=b'{"name": "y", "kind": "human", "purpose": "\\u0000"}')
    assert resp.status_code in (415, 422), resp.text  # no content type: still checked
    # A literal backslash followed by "u0000" is text, not a NUL.
    resp = client.post("/v1/identities", headers=admin_headers,
                       json={"name": "lit", "kind": "human", "purpose": "\\u0000"})
    assert resp.status_code == 201, resp.text


def test_authzen_evaluation_with_nul_in_its_ids_answers_without_a_500(
        app_client: TestClient, admin_headers: dict[str, str]) -> None:
    client = _client(app_client)
    for body in ({"subject": {"type": "Agent", "id": NUL}, "action": {"name": "read"},
                  "resource": {"type": "Dataset", "id": NUL}},
                 {"subject": {"type": NUL, "id": "x"}, "action": {"name": NUL},
                  "resource": {"type": "Dataset", "id": "d"},
                  "context": {NUL: NUL}}):
        resp = client.post("/access/v1/evaluation", headers=admin_headers, json=body)
        assert resp.status_code < 500, resp.text
    resp = client.post("/access/v1/search/subject", headers=admin_headers,
                       json={"subject": {"type": NUL}, "action": {"name": NUL},
                             "resource": {"type": "Dataset", "id": NUL}})
    assert resp.status_code < 500, resp.text


def test_the_shared_rule_refuses_control_characters_nul_and_lone_surrogates() -> None:
    from tessera.text import identifier, storable, unstorable_at
    assert identifier("idn_0123") and not identifier(NUL) and not identifier("a\tb")
    assert not identifier("") and not identifier("x" * 201) and not identifier(None)
    assert storable("line\nbreak") and not storable(NUL) and not storable("\ud800")
    assert unstorable_at({"a": [1, {"b": "\ud800"}]}) == ("a", 1, "b")
    assert unstorable_at({"a": secrets.token_hex(4)}) is None

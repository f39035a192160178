"""AuthZEN 1.0 endpoints, the policy store, the catalog, the decision log and the management
API under policy — over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import bearer_headers as token

from tessera.container import Services

POLICY = """
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource is Dataset);

@id("agents-read-public")
@mask("ssn")
permit (principal is Agent, action == Action::"read", resource is Dataset)
when { resource has classification && resource.classification == "public" };

@id("no-archived-writes")
@reason("archived datasets are read-only")
forbid (principal, action == Action::"write", resource is Dataset)
when { resource has status && resource.status == "archived" };

@id("alice-writes")
permit (principal == User::"alice", action == Action::"write", resource is Dataset);
"""


@pytest.fixture
def pdp(app_client: TestClient, admin_headers: dict[str, str]) -> dict[str, str]:
    """Policies pushed, a catalog and an imported user in place; returns admin headers."""
    r = app_client.post("/v1/policies/default", headers=admin_headers,
                        json={"files": {"main.cedar": POLICY}, "message": "first"})
    assert r.status_code == 201, r.text
    for rid, cls in (("pub", "public"), ("fin", "confidential")):
        r = app_client.post("/v1/resources", headers=admin_headers,
                            json={"type": "Dataset", "id": rid,
                                  "attributes": {"classification": cls}})
        assert r.status_code == 201, r.text
    r = app_client.post("/v1/entities", headers=admin_headers,
                        json={"entities": [{"uid": {"type": "User", "id": "alice"},
                                            "attrs": {"team": "x"}, "parents": []}]})
    assert r.status_code == 200, r.text
    return admin_headers


def ev(client: TestClient, headers: dict[str, str], body: Any, path: str = "evaluation",
       **kw: Any) -> Any:
    return client.post(f"/access/v1/{path}", headers=headers, json=body, **kw)


ALICE = {"type": "user", "id": "alice"}
PUB = {"type": "Dataset", "id": "pub"}


def test_evaluation_permits_and_returns_determining_policies(app_client: TestClient,
                                                              pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"}, "resource": PUB})
    assert r.status_code == 200
    body = r.json()
    assert body["decision"] is True
    assert body["context"]["policies"] == ["alice-reads"]
    assert body["context"]["policy_version"] == 1


def test_evaluation_of_a_registered_agent_carries_mask_obligation(
        app_client: TestClient, pdp: dict[str, str], make_identity: Callable[..., Any]) -> None:
    bot = make_identity("reader-bot")
    r = ev(app_client, pdp, {"subject": {"type": "identity", "id": bot.id},
                             "action": {"name": "read"}, "resource": PUB})
    assert r.json()["decision"] is True
    assert r.json()["context"]["obligations"][0]["fields"] == ["ssn"]


def test_resource_properties_merge_for_the_request_only(app_client: TestClient,
                                                        pdp: dict[str, str]) -> None:
    archived = {"type": "Dataset", "id": "new", "properties": {"status": "archived"}}
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "write"},
                             "resource": archived})
    assert r.json()["decision"] is False
    assert r.json()["context"]["reasons"] == ["archived datasets are read-only"]
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "write"},
                             "resource": {"type": "Dataset", "id": "new"}})
    assert r.json()["decision"] is True


def test_unknown_subject_is_a_deny_not_an_error(app_client: TestClient,
                                                pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": {"type": "user", "id": "mallory"},
                             "action": {"name": "read"}, "resource": PUB})
    assert r.status_code == 200 and r.json()["decision"] is False
    assert r.json()["context"]["reasons"] == ["unknown subject"]


@pytest.mark.parametrize("body,why", [
    ({"action": {"name": "read"}, "resource": PUB}, "missing subject"),
    ({"subject": ALICE, "resource": PUB}, "missing action"),
    ({"subject": ALICE, "action": {"name": "read"}}, "missing resource"),
    ({"subject": {"id": "alice"}, "action": {"name": "read"}, "resource": PUB}, "no type"),
    ({"subject": {"type": "user"}, "action": {"name": "read"}, "resource": PUB}, "no id"),
    ({"subject": ALICE, "action": {}, "resource": PUB}, "no action name"),
    ({"subject": "alice", "action": {"name": "read"}, "resource": PUB}, "subject a string"),
    ({"subject": ALICE, "action": {"name": 123}, "resource": PUB}, "name a number"),
    ({"subject": ALICE, "action": {"name": "read"}, "resource": PUB, "context": 5}, "context"),
    ([1, 2], "not an object"),
])
def test_rejects_malformed_evaluation_with_400(app_client: TestClient, pdp: dict[str, str],
                                               body: Any, why: str) -> None:
    r = ev(app_client, pdp, body)
    assert r.status_code == 400, why


def test_rejects_bad_json_empty_body_and_wrong_content_type(app_client: TestClient,
                                                            pdp: dict[str, str]) -> None:
    for content, ctype in ((b"{not json", "application/json"), (b"", "application/json"),
                           (b'{"a": 1}', "text/plain")):
        r = app_client.post("/access/v1/evaluation", content=content,
                            headers={**pdp, "content-type": ctype})
        assert r.status_code == 400, (content, ctype)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_rejects_unknown_entity_type_with_400(app_client: TestClient,
                                              pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": {"type": "spaceship", "id": "x"},
                             "action": {"name": "read"}, "resource": PUB})
    assert r.status_code == 400 and r.json()["code"] == "unknown_entity_type"


def test_rejects_oversize_request_with_413(app_client: TestClient, pdp: dict[str, str]) -> None:
    big = {"subject": ALICE, "action": {"name": "read"}, "resource": PUB,
           "context": {"pad": "x" * 70_000}}
    assert ev(app_client, pdp, big).status_code == 413


def test_unknown_fields_ignored_and_request_id_echoed(app_client: TestClient,
                                                      pdp: dict[str, str]) -> None:
    r = ev(app_client, {**pdp, "X-Request-ID": "req-42"},
           {"subject": ALICE, "action": {"name": "read"}, "resource": PUB,
            "futureField": {"nested": True}})
    assert r.status_code == 200 and r.json()["decision"] is True
    assert r.headers["x-request-id"] == "req-42"


def test_evaluations_defaults_order_and_failed_items(app_client: TestClient,
                                                     pdp: dict[str, str]) -> None:
    body = {"subject": ALICE, "action": {"name": "read"}, "resource": PUB,
            "evaluations": [{}, {"action": {"name": "write"},
                                 "resource": {"type": "Dataset", "id": "old",
                                              "properties": {"status": "archived"}}},
                            {"resource": {"id": "no-type"}},
                            {"subject": {"type": "user", "id": "mallory"}}]}
    r = ev(app_client, pdp, body, "evaluations")
    assert r.status_code == 200
    got = r.json()["evaluations"]
    assert [e["decision"] for e in got] == [True, False, False, False]
    # An item's own key replaces the default whole: no merging of type from the default.
    assert got[2]["context"]["error"]["status"] == 400
    assert "decision" not in r.json()


@pytest.mark.parametrize("semantic,expected", [
    ("execute_all", [True, False, True]),
    ("deny_on_first_deny", [True, False]),
    ("permit_on_first_permit", [True]),
])
def test_evaluations_semantics(app_client: TestClient, pdp: dict[str, str], semantic: str,
                               expected: list[bool]) -> None:
    body = {"subject": ALICE, "action": {"name": "read"},
            "options": {"evaluations_semantic": semantic},
            "evaluations": [{"resource": PUB}, {"action": {"name": "delete"}},
                            {"resource": {"type": "Dataset", "id": "fin"}}]}
    got = ev(app_client, pdp, body, "evaluations").json()["evaluations"]
    assert [e["decision"] for e in got] == expected


def test_evaluations_without_array_is_a_single_evaluation(app_client: TestClient,
                                                          pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"}, "resource": PUB,
                             "evaluations": []}, "evaluations")
    assert r.json()["decision"] is True


def test_rejects_bad_semantic_with_400(app_client: TestClient, pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"},
                             "options": {"evaluations_semantic": "most"},
                             "evaluations": [{"resource": PUB}]}, "evaluations")
    assert r.status_code == 400


def test_search_endpoints_and_pagination(app_client: TestClient, pdp: dict[str, str]) -> None:
    r = ev(app_client, pdp, {"subject": {"type": "user"}, "action": {"name": "read"},
                             "resource": PUB}, "search/subject")
    assert {"type": "user", "id": "alice"} in r.json()["results"]
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"},
                             "resource": {"type": "Dataset"}, "page": {"limit": 1}},
           "search/resource")
    first = r.json()
    assert len(first["results"]) == 1 and first["page"]["next_token"]
    r = ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"},
                             "resource": {"type": "Dataset"},
                             "page": {"token": first["page"]["next_token"]}}, "search/resource")
    second = r.json()
    assert second["page"]["next_token"] == ""
    ids = {x["id"] for x in first["results"] + second["results"]}
    assert ids == {"pub", "fin"}
    r = ev(app_client, pdp, {"subject": ALICE, "resource": PUB}, "search/action")
    assert {"name": "read"} in r.json()["results"] and {"name": "write"} in r.json()["results"]
    r = ev(app_client, pdp, {"subject": {"type": "spaceship"}, "action": {"name": "read"},
                             "resource": PUB}, "search/subject")
    assert r.status_code == 200 and r.json()["results"] == []
    r = ev(app_client, pdp, {"subject": {"type": "user"}, "action": {"name": "read"},
                             "resource": {"type": "Dataset"}}, "search/subject")
    assert r.status_code == 400


def test_well_known_configuration(app_client: TestClient) -> None:
    body = app_client.get("/.well-known/authzen-configuration").json()
    assert body["access_evaluation_endpoint"] == f"{body['policy_decision_point']}" \
                                                 "/access/v1/evaluation"
    assert body["search_action_endpoint"].endswith("/access/v1/search/action")


def test_pdp_needs_a_token_and_a_policy_that_allows_the_caller(
        app_client: TestClient, pdp: dict[str, str], make_identity: Callable[..., Any]) -> None:
    body = {"subject": ALICE, "action": {"name": "read"}, "resource": PUB}
    assert app_client.post("/access/v1/evaluation", json=body).status_code == 401
    nobody = make_identity("plain-agent")
    assert ev(app_client, token(app_client, nobody), body).status_code == 403
    client_id = make_identity("pep-agent", roles=("authz-client",))
    assert ev(app_client, token(app_client, client_id), body).json()["decision"] is True


def test_every_decision_is_an_audit_event(app_client: TestClient, pdp: dict[str, str],
                                          services: Services) -> None:
    ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"}, "resource": PUB})
    with services.sessions() as s:
        events = services.audit.events(s, type="authz.decision.made", limit=1000)
        ours = [e for e in events if e.data.get("policy_set") == "default"]
        assert len(ours) == 1
        data = ours[0].data
        assert data["decision"] is True and data["policies"] == ["alice-reads"]
        assert data["policy_version"] == 1 and data["latency_us"] > 0
        assert data["request"]["subject"] == {"type": "User", "id": "alice"}
        assert services.audit.verify(s).ok


def test_a_subject_id_longer_than_the_audit_column_is_decided_and_audited(
        app_client: TestClient, pdp: dict[str, str], services: Services) -> None:
    """AuthZEN allows ids up to 256 characters; the audit log's subject column holds 200.
    The event records the id cut to fit (the whole id stays in its data), instead of failing
    the group committer's batch, and with it other callers' requests."""
    long_id = "u" * 256
    r = ev(app_client, pdp, {"subject": {"type": "user", "id": long_id},
                             "action": {"name": "read"}, "resource": PUB})
    assert r.status_code == 200 and r.json()["decision"] is False
    with services.sessions() as s:
        (event,) = [e for e in services.audit.events(s, type="authz.decision.made", limit=100)
                    if e.data["request"]["subject"]["id"] == long_id]
        assert event.subject == "u" * 199 + "\u2026"
        assert services.audit.verify(s).ok


def test_push_of_an_invalid_policy_is_refused_and_the_active_version_stays(
        app_client: TestClient, pdp: dict[str, str]) -> None:
    bad = "permit (principal, action, resource);\npermit (principal,\n action ==, resource);"
    r = app_client.post("/v1/policies/default", headers=pdp, json={"files": {"x.cedar": bad}})
    assert r.status_code == 422
    prob = r.json()["problems"][0]
    assert (prob["file"], prob["line"], prob["column"]) == ("x.cedar", 3, 11)
    typo = 'permit (principal is Agnet, action == Action::"read", resource);'
    r = app_client.post("/v1/policies/default", headers=pdp, json={"files": {"y.cedar": typo}})
    assert r.status_code == 422 and "Agnet" in r.json()["problems"][0]["message"]
    r = app_client.get("/v1/policies/default/versions", headers=pdp)
    assert [v["version"] for v in r.json()["items"]] == [1]
    assert ev(app_client, pdp, {"subject": ALICE, "action": {"name": "read"},
                                "resource": PUB}).json()["decision"] is True


def test_versions_diff_activate_and_rollback(app_client: TestClient,
                                             pdp: dict[str, str]) -> None:
    v2 = POLICY.replace('@id("alice-reads")\npermit', '@id("alice-reads")\nforbid')
    r = app_client.post("/v1/policies/default", headers=pdp,
                        json={"files": {"main.cedar": v2}, "message": "lock alice out"})
    assert r.json()["version"] == 2
    read = {"subject": ALICE, "action": {"name": "read"}, "resource": PUB}
    assert ev(app_client, pdp, read).json()["decision"] is False
    d = app_client.get("/v1/policies/default/diff", headers=pdp,
                       params={"from": 1, "to": 2}).json()["diff"]
    assert "-permit" in d and "+forbid" in d
    r = app_client.post("/v1/policies/default/rollback", headers=pdp)
    assert r.json()["active_version"] == 1
    assert ev(app_client, pdp, read).json()["decision"] is True
    app_client.post("/v1/policies/default/activate", headers=pdp, json={"version": 2})
    versions = app_client.get("/v1/policies/default/versions", headers=pdp).json()["items"]
    assert [(v["version"], v["active"], v["message"]) for v in versions] == [
        (2, True, "lock alice out"), (1, False, "first")]
    shown = app_client.get("/v1/policies/default/versions/1", headers=pdp).json()
    assert shown["files"]["main.cedar"] == POLICY


def test_catalog_validates_attributes(app_client: TestClient, pdp: dict[str, str]) -> None:
    r = app_client.post("/v1/resources", headers=pdp,
                        json={"type": "Dataset", "id": "d", "attributes":
                              {"classification": "secret-ish"}})
    assert r.status_code == 422
    r = app_client.post("/v1/resources", headers=pdp,
                        json={"type": "not a type", "id": "d"})
    assert r.status_code == 422
    r = app_client.get("/v1/resources", headers=pdp, params={"type": "Dataset"})
    assert {i["uid"]["id"] for i in r.json()["items"]} == {"pub", "fin"}
    r = app_client.post("/v1/entities", headers=pdp,
                        json={"entities": [{"uid": {"type": "User", "id": "x"},
                                            "attrs": {"a": {"__extn": {"fn": "ip",
                                                                       "arg": "nope"}}}}]})
    assert r.status_code == 422


def test_snapshot_follows_registry_changes(app_client: TestClient, pdp: dict[str, str],
                                           make_identity: Callable[..., Any],
                                           services: Services) -> None:
    bot = make_identity("soon-suspended")
    read = {"subject": {"type": "agent", "id": bot.id}, "action": {"name": "read"},
            "resource": PUB}
    assert ev(app_client, pdp, read).json()["decision"] is True
    r = app_client.post(f"/v1/identities/{bot.id}/suspend", headers=pdp, json={"reason": "t"})
    assert r.status_code == 200
    d = ev(app_client, pdp, read).json()
    assert d["decision"] is False and d["context"]["reasons"] == ["subject is suspended"]


def test_delegated_administration_team_lead_manages_own_team(
        app_client: TestClient, pdp: dict[str, str],
        make_identity: Callable[..., Any]) -> None:
    admin_policy = """
@id("admins") permit (principal in Role::"admin", action, resource);

@id("team-leads-manage-their-team")
permit (
  principal in Role::"team-lead",
  action in [Action::"GET /v1/identities/{identity_id}",
             Action::"POST /v1/identities/{identity_id}/suspend"],
  resource is Agent
)
when { principal has team && resource has team && principal.team == resource.team };
"""
    r = app_client.post("/v1/policies/admin", headers=pdp,
                        json={"files": {"admin.cedar": admin_policy}})
    assert r.status_code == 201, r.text
    lead = make_identity("lead", kind="human", roles=("team-lead",),
                         attributes={"team": "search"})
    mine = make_identity("search-bot", attributes={"team": "search"})
    theirs = make_identity("ads-bot", attributes={"team": "ads"})
    h = token(app_client, lead)
    assert app_client.get(f"/v1/identities/{mine.id}", headers=h).status_code == 200
    assert app_client.post(f"/v1/identities/{mine.id}/suspend", headers=h,
                           json={"reason": "misbehaving"}).status_code == 200
    r = app_client.post(f"/v1/identities/{theirs.id}/suspend", headers=h, json={})
    assert r.status_code == 403
    assert app_client.get("/v1/identities", headers=h).status_code == 403
    assert app_client.post("/v1/policies/admin", headers=h,
                           json={"files": {"a.cedar": admin_policy}}).status_code == 403


def test_management_decisions_are_logged(app_client: TestClient, admin_headers: dict[str, str],
                                         services: Services) -> None:
    assert app_client.get("/v1/identities", headers=admin_headers).status_code == 200
    with services.sessions() as s:
        events = services.audit.events(s, type="authz.decision.made")
        assert any(e.data["policy_set"] == "admin" and e.data["decision"] and
                   e.action == "GET /v1/identities" for e in events)
        _ = json.dumps([e.data for e in events])

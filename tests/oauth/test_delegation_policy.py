"""Delegation checked against policy: token exchange asks the PDP for Action::"act_for"
(principal: the actor, resource: the subject) after the identity's `may_act_for`."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from tests.conftest import Actor

from oauth_helpers import AT_TYPE, EXCHANGE, count_events, token
from tessera.audit import events as ev
from tessera.container import Services

OTHER = """
@id("anyone-reads")
permit (principal, action == Action::"read", resource);
"""


@pytest.fixture
def user(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity(kind="human", allowed_scopes=["read"])


@pytest.fixture
def agent(make_identity: Callable[..., Actor], user: Actor) -> Actor:
    return make_identity("helper-bot", allowed_scopes=["read"], may_act_for=[user.id])


def push(client: TestClient, headers: dict[str, str], text: str) -> None:
    r = client.post("/v1/policies/default", headers=headers,
                    json={"files": {"main.cedar": text}})
    assert r.status_code == 201, r.text


def exchange(client: TestClient, user: Actor, agent: Actor) -> object:
    subject = token(client, user, scope="read").json()["access_token"]
    return token(client, agent, grant_type=EXCHANGE, subject_token=subject,
                 subject_token_type=AT_TYPE)


def test_no_delegation_policy_keeps_may_act_for(app_client: TestClient,
                                                admin_headers: dict[str, str], user: Actor,
                                                agent: Actor) -> None:
    assert exchange(app_client, user, agent).status_code == 200  # no policy at all
    push(app_client, admin_headers, OTHER)  # policies, none about act_for
    assert exchange(app_client, user, agent).status_code == 200


def test_forbid_on_act_for_refuses_exchange_and_issues_nothing(
        app_client: TestClient, admin_headers: dict[str, str], user: Actor, agent: Actor,
        services: Services) -> None:
    push(app_client, admin_headers, OTHER + f"""
@id("helper-never-delegates")
forbid (principal == Agent::"{agent.id}", action == Action::"act_for", resource);
""")
    issued = count_events(services, ev.TOKEN_ISSUED)
    resp = exchange(app_client, user, agent)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_request"
    assert "policy" in resp.json()["error_description"]
    assert "access_token" not in resp.json() and "refresh_token" not in resp.json()
    # Only the user's own subject token was issued; the exchange issued nothing.
    assert count_events(services, ev.TOKEN_ISSUED) == issued + 1


def test_act_for_policies_without_a_permit_refuse(app_client: TestClient,
                                                  admin_headers: dict[str, str], user: Actor,
                                                  agent: Actor,
                                                  make_identity: Callable[..., Actor]) -> None:
    trusted = make_identity("trusted-bot", allowed_scopes=["read"], may_act_for=[user.id])
    push(app_client, admin_headers, f"""
@id("only-trusted-delegates")
permit (principal == Agent::"{trusted.id}", action == Action::"act_for", resource is User);
""")
    assert exchange(app_client, user, trusted).status_code == 200
    resp = exchange(app_client, user, agent)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
    assert "policy" in resp.json()["error_description"]


def test_policy_never_widens_may_act_for(app_client: TestClient, admin_headers: dict[str, str],
                                         user: Actor, make_identity: Callable[..., Actor]) -> None:
    stranger = make_identity("stranger-bot", allowed_scopes=["read"], may_act_for=["idn_x"])
    push(app_client, admin_headers, """
@id("everyone-delegates")
permit (principal, action == Action::"act_for", resource);
""")
    resp = exchange(app_client, user, stranger)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"

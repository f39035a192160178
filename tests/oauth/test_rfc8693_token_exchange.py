"""Token exchange for delegation (RFC 8693): act claims, narrowing, depth, every refusal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.conftest import ISSUER, Actor

from oauth_helpers import AT_TYPE, EXCHANGE, claims_of, count_events, revoke, token
from tessera.clock import FakeClock
from tessera.container import Services

API = "https://api.example.org"


@pytest.fixture
def user(make_identity: Callable[..., Actor]) -> Actor:
    return make_identity(kind="human", allowed_scopes=["read", "write", "admin"])


@pytest.fixture
def agent(make_identity: Callable[..., Actor], user: Actor) -> Actor:
    return make_identity(allowed_scopes=["read", "write"], allowed_audiences=[API],
                         may_act_for=[user.id])


def user_token(client: TestClient, user: Actor, scope: str = "read write admin") -> str:
    resp = token(client, user, scope=scope)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def exchange(client: TestClient, actor: Actor, subject_token: str, **form) -> object:
    return token(client, actor, grant_type=EXCHANGE, subject_token=subject_token,
                 subject_token_type=AT_TYPE, **form)


def test_exchange_issues_delegated_token(app_client: TestClient, user: Actor, agent: Actor,
                                         services: Services) -> None:
    subject = user_token(app_client, user)
    resp = exchange(app_client, agent, subject, resource=API, scope="read")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["issued_token_type"] == AT_TYPE and body["token_type"] == "Bearer"
    assert body["refresh_token"].startswith("tsr_rt_")
    claims = claims_of(body["access_token"])
    assert claims["sub"] == user.id and claims["client_id"] == agent.id
    assert claims["act"] == {"sub": f"spiffe://example.org/agent/{agent.name}",
                             "client_id": agent.id}
    assert claims["aud"] == API and claims["scope"] == "read"
    assert claims["exp"] <= claims_of(subject)["exp"]


def test_scope_defaults_to_intersection(app_client: TestClient, user: Actor,
                                        agent: Actor) -> None:
    subject = user_token(app_client, user, scope="read admin")
    body = exchange(app_client, agent, subject).json()
    assert claims_of(body["access_token"])["scope"] == "read"


def test_exchange_never_outlives_subject_token(app_client: TestClient, user: Actor,
                                               agent: Actor, clock: FakeClock) -> None:
    subject = user_token(app_client, user)
    clock.advance(800)
    body = exchange(app_client, agent, subject, clock=clock).json()
    assert body["expires_in"] <= 100
    assert claims_of(body["access_token"])["exp"] <= claims_of(subject)["exp"]


def test_delegated_refresh_keeps_act_and_rechecks_delegation(
        app_client: TestClient, user: Actor, agent: Actor, services: Services) -> None:
    body = exchange(app_client, agent, user_token(app_client, user)).json()
    again = token(app_client, agent, grant_type="refresh_token",
                  refresh_token=body["refresh_token"])
    assert again.status_code == 200, again.text
    assert claims_of(again.json()["access_token"])["act"]["client_id"] == agent.id
    with services.sessions() as s:
        from tessera.identity.schemas import IdentityUpdate
        services.identities.update(s, agent.id, IdentityUpdate(may_act_for=[]), actor="t")
        s.commit()
    refused = token(app_client, agent, grant_type="refresh_token",
                    refresh_token=again.json()["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"


def test_nested_delegation_and_depth_limit(app_client: TestClient, user: Actor, agent: Actor,
                                           make_identity: Callable[..., Actor]) -> None:
    second = make_identity(allowed_scopes=["read"], may_act_for=["*"])
    third = make_identity(allowed_scopes=["read"], may_act_for=["*"])
    first_token = exchange(app_client, agent, user_token(app_client, user)).json()
    nested = exchange(app_client, second, first_token["access_token"], scope="read")
    assert nested.status_code == 200, nested.text
    act = claims_of(nested.json()["access_token"])["act"]
    assert act["client_id"] == second.id and act["act"]["client_id"] == agent.id
    assert claims_of(nested.json()["access_token"])["sub"] == user.id
    too_deep = exchange(app_client, third, nested.json()["access_token"], scope="read")
    assert too_deep.status_code == 400 and too_deep.json()["error"] == "invalid_request"
    assert "access_token" not in too_deep.json()


@pytest.mark.parametrize("who", ["inner_actor", "outer_actor", "subject",
                                 "subject_suspended_then_resumed"])
def test_refreshing_a_nested_delegation_checks_every_party(
        app_client: TestClient, user: Actor, agent: Actor, services: Services,
        make_identity: Callable[..., Actor], clock: FakeClock, who: str) -> None:
    """The refresh of a nested delegation (second acts for agent acts for user) is refused
    when any party of the chain is suspended, and a resume does not revive the family."""
    second = make_identity(allowed_scopes=["read"], may_act_for=["*"])
    first_token = exchange(app_client, agent, user_token(app_client, user)).json()
    nested = exchange(app_client, second, first_token["access_token"], scope="read")
    assert nested.status_code == 200, nested.text
    ok = token(app_client, second, grant_type="refresh_token",
               refresh_token=nested.json()["refresh_token"])
    assert ok.status_code == 200, ok.text
    target = {"inner_actor": agent, "outer_actor": second}.get(who, user)
    clock.advance(1)
    with services.sessions() as s:
        services.identities.suspend(s, target.id, actor="test")
        s.commit()
        if who == "subject_suspended_then_resumed":
            services.identities.resume(s, target.id, actor="test")
            s.commit()
    refused = token(app_client, second, grant_type="refresh_token",
                    refresh_token=ok.json()["refresh_token"], clock=clock)
    assert refused.status_code in (400, 401), refused.text
    assert refused.json()["error"] in ("invalid_grant", "invalid_client")


REFUSALS = ["expired", "revoked", "foreign_key", "foreign_issuer", "garbage",
            "escalation", "not_delegable", "other_subject", "bad_requested_type",
            "bad_target", "self"]


@pytest.mark.parametrize("case", REFUSALS)
def test_rejects_exchange(case: str, app_client: TestClient, user: Actor, agent: Actor,
                          make_identity: Callable[..., Actor], services: Services,
                          clock: FakeClock) -> None:
    subject = user_token(app_client, user)
    form: dict[str, str] = {}
    actor = agent
    expected = "invalid_request"
    if case == "expired":
        clock.advance(claims_of(subject)["exp"] - clock.now().timestamp() + 1)
    elif case == "revoked":
        assert revoke(app_client, user, subject).status_code == 200
    elif case in ("foreign_key", "foreign_issuer"):
        key = ECKey.generate_key("P-256", private=True)
        claims = dict(claims_of(subject))
        if case == "foreign_issuer":
            claims["iss"] = "https://evil.example"
        subject = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": "x"}, claims, key)
    elif case == "garbage":
        subject = "not-a-token"
    elif case == "escalation":
        form["scope"] = "read admin"
        expected = "invalid_scope"
    elif case == "not_delegable":
        actor = make_identity(allowed_scopes=["read"])
        expected = "unauthorized_client"
    elif case == "other_subject":
        other = make_identity(kind="human", allowed_scopes=["read"])
        subject = user_token(app_client, other, scope="read")
    elif case == "bad_requested_type":
        form["requested_token_type"] = "urn:ietf:params:oauth:token-type:id_token"
    elif case == "bad_target":
        form["resource"] = "https://elsewhere.example.org"
        expected = "invalid_target"
    elif case == "self":
        subject = user_token(app_client, agent, scope="read")
    issued = count_events(services, "oauth.token.issued")
    resp = exchange(app_client, actor, subject, clock=clock, **form)
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] == expected
    assert "access_token" not in resp.json()
    assert count_events(services, "oauth.token.issued") == issued


def test_actor_token_names_the_actor(app_client: TestClient, user: Actor, agent: Actor,
                                     make_identity: Callable[..., Actor]) -> None:
    gateway = make_identity(allowed_scopes=["read"])
    actor_token = token(app_client, agent, scope="read").json()["access_token"]
    # The gateway presents the agent's token: refused, it was not issued to the gateway.
    resp = exchange(app_client, gateway, user_token(app_client, user),
                    actor_token=actor_token, actor_token_type=AT_TYPE)
    assert resp.json()["error"] == "invalid_request"
    ok = exchange(app_client, agent, user_token(app_client, user),
                  actor_token=actor_token, actor_token_type=AT_TYPE)
    assert ok.status_code == 200, ok.text
    assert claims_of(ok.json()["access_token"])["act"]["client_id"] == agent.id
    resp = exchange(app_client, agent, user_token(app_client, user), actor_token=actor_token)
    assert resp.json()["error"] == "invalid_request"


def test_subject_token_for_another_audience_is_refused(
        app_client: TestClient, make_identity: Callable[..., Actor]) -> None:
    user = make_identity(kind="human", allowed_scopes=["read"],
                         allowed_audiences=["https://other.example.org"])
    agent = make_identity(allowed_scopes=["read"], may_act_for=["*"])
    subject = token(app_client, user, resource="https://other.example.org").json()
    resp = exchange(app_client, agent, subject["access_token"])
    assert resp.json()["error"] == "invalid_request"
    # The default audience (the issuer) is what delegation expects.
    subject = token(app_client, user).json()
    assert claims_of(subject["access_token"])["aud"] == ISSUER
    assert exchange(app_client, agent, subject["access_token"]).status_code == 200


def test_star_means_any_human_only(app_client: TestClient,
                                   make_identity: Callable[..., Actor]) -> None:
    agent = make_identity(allowed_scopes=["read"], may_act_for=["*"])
    service = make_identity(kind="service", allowed_scopes=["read"])
    resp = exchange(app_client, agent, token(app_client, service).json()["access_token"])
    assert resp.json()["error"] == "invalid_request"

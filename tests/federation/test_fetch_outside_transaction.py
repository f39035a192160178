"""Fetching an issuer's keys: never inside a database transaction, within one total deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from tests.conftest import Actor

from tessera.container import Services
from tessera.federation import FederationRejected
from tessera.federation.jwks import JWKSFetcher
from tessera.federation.schemas import IssuerCreate
from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DISCOVERY = "/.well-known/openid-configuration"
K8S_RULE = {"match": {"sub": "system:serviceaccount:ml:trainer"},
            "identity": "pipeline/trainer"}


def register(services: Services, issuer_url: str) -> None:
    with services.sessions() as s:
        services.federation.add(s, IssuerCreate(name="k8s", issuer=issuer_url,
                                                audiences=["tessera"], rules=[K8S_RULE]),
                                actor="test")
        s.commit()


def _pg_idle_in_transaction(url: str) -> int:
    """Connections to the test database that hold an open transaction and run nothing."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("grant", ["jwt_bearer", "token_exchange"])
def test_hung_issuer_does_not_block_another_clients_token_request(
        fed_services: Services, app_client: TestClient, admin_headers: dict[str, str],
        oidc_issuer: Any, make_identity: Callable[..., Actor], grant: str) -> None:
    # Only the test ends the hang (the fetch deadline is far beyond the waits below).
    fed_services.settings.federation.fetch_timeout = 30.0
    trainer = make_identity("trainer", kind="pipeline", allowed_scopes=["read"])
    helper = make_identity("helper-agent", allowed_scopes=["read"], may_act_for=[trainer.id])
    bystander = make_identity("bystander")
    register(fed_services, oidc_issuer.url)
    oidc_issuer.hang_paths.add(DISCOVERY)
    if grant == "jwt_bearer":
        form = {"grant_type": GRANT_TYPE, "assertion": oidc_issuer.token()}
    else:
        form = {**helper.form(), "grant_type": EXCHANGE, "subject_token": oidc_issuer.token(),
                "subject_token_type": JWT_TYPE}
    results: dict[str, Any] = {}

    def hung_request() -> None:
        results["hung"] = app_client.post("/oauth2/token", data=form)

    def other_request() -> None:
        results["other"] = app_client.post("/oauth2/token", data=bystander.form())

    hung = threading.Thread(target=hung_request, daemon=True)
    other = threading.Thread(target=other_request, daemon=True)
    try:
        hung.start()
        assert oidc_issuer.hanging.wait(30), "the token request never reached the issuer"
        other.start()
        other.join(20)  # a bound, not a timing threshold: it should finish at once
        other_finished = not other.is_alive()
        hung_still_waiting = hung.is_alive()
        idle = _pg_idle_in_transaction(fed_services.settings.db_url) \
            if fed_services.settings.db_url.startswith("postgresql") else 0
    finally:
        oidc_issuer.release.set()
        hung.join(60)
        other.join(60)
    assert other_finished, "another client's token request waited for the hung issuer"
    assert hung_still_waiting, "the fetch ended before the test released it"
    assert idle == 0, "a transaction stayed open during the fetch"
    assert results["other"].status_code == 200, results["other"].text
    # The hung issuer's request is refused as before, and audited.
    refused = results["hung"]
    assert refused.status_code == 400
    assert refused.json()["error"] == ("invalid_grant" if grant == "jwt_bearer"
                                       else "invalid_request")
    with fed_services.sessions() as s:
        events = fed_services.audit.events(s, type="oauth.token.refused")
    assert events, "the refusal was not audited"


def test_never_fetches_inside_the_callers_transaction(fed_services: Services,
                                                      oidc_issuer: Any,
                                                      make_identity: Any) -> None:
    trainer = make_identity("trainer", kind="pipeline")
    register(fed_services, oidc_issuer.url)
    token = oidc_issuer.token()
    with fed_services.sessions() as s:
        s.execute(select(1))  # the caller's transaction is open
        with pytest.raises(FederationRejected) as info:
            fed_services.federation.authenticate_token(s, token)
        assert info.value.reason.startswith("issuer keys unavailable")
    assert oidc_issuer.requests == []
    fed_services.federation.prefetch(token)  # outside any transaction
    with fed_services.sessions() as s:
        s.execute(select(1))
        assert fed_services.federation.authenticate_token(s, token).identity_id == trainer.id
    assert oidc_issuer.requests == [DISCOVERY, "/jwks"]


class SteppedClock:
    """A monotonic clock that moves only when the issuer says a request took time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("discovery_takes,jwks_requested", [(3.0, True), (5.0, False)])
def test_discovery_and_jwks_share_one_deadline(fed_services: Services, oidc_issuer: Any,
                                               make_identity: Any, discovery_takes: float,
                                               jwks_requested: bool) -> None:
    """Each request alone is within the 5 s deadline; together they are not."""
    make_identity("trainer", kind="pipeline")
    settings = fed_services.settings.federation
    settings.fetch_timeout = 5.0
    clock = SteppedClock()
    took = {DISCOVERY: discovery_takes, "/jwks": 3.0}

    def answer_after(path: str) -> None:
        clock.now += took.get(path, 0.0)

    oidc_issuer.before_answer = answer_after
    fed_services.federation.fetcher = JWKSFetcher(
        settings, now=lambda: fed_services.clock.now().timestamp(), monotonic=clock)
    register(fed_services, oidc_issuer.url)
    with fed_services.sessions() as s, pytest.raises(FederationRejected) as info:
        fed_services.federation.authenticate_token(s, oidc_issuer.token())
    assert info.value.reason == "issuer keys unavailable: fetch timed out"
    # The second request was cut by what the first left of the deadline: refused after its
    # answer, or never made at all.
    assert ("/jwks" in oidc_issuer.requests) is jwks_requested


def test_slow_discovery_and_slow_jwks_are_refused_within_one_deadline(
        fed_services: Services, oidc_issuer: Any, make_identity: Any) -> None:
    """Real time: each answer comes in 60% of the deadline, so only a total deadline refuses.

    Load on the machine only makes the refusal more certain; nothing here needs to be fast."""
    make_identity("trainer", kind="pipeline")
    fed_services.settings.federation.fetch_timeout = 3.0

    def slow(path: str) -> None:
        time.sleep(1.8)

    oidc_issuer.before_answer = slow
    register(fed_services, oidc_issuer.url)
    with fed_services.sessions() as s, pytest.raises(FederationRejected) as info:
        fed_services.federation.authenticate_token(s, oidc_issuer.token())
    assert info.value.reason == "issuer keys unavailable: fetch timed out"
    assert "/jwks" in oidc_issuer.requests  # discovery succeeded; the JWKS request was cut

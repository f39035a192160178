"""Federated tokens: accepted from a real loopback issuer, refused on every listed attack."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from tessera.container import Services
from tessera.errors import ValidationFailed
from tessera.federation import FederationRejected
from tessera.federation.jwks import FetchError
from tessera.federation.schemas import IssuerCreate, MappingRule

K8S_RULE = {"match": {"sub": "system:serviceaccount:ml:trainer"},
            "identity": "pipeline/trainer"}


@pytest.fixture
def trainer(make_identity: Callable[..., Any]) -> Any:
    return make_identity("trainer", kind="pipeline")


def register(services: Services, issuer_url: str, **fields: Any) -> str:
    body: dict[str, Any] = {"name": fields.pop("name", "k8s"), "issuer": issuer_url,
                            "audiences": ["tessera"], "rules": [K8S_RULE]}
    body.update(fields)
    with services.sessions() as s:
        row = services.federation.add(s, IssuerCreate(**body), actor="test")
        s.commit()
        return row.id


def authenticate(services: Services, token: str) -> Any:
    with services.sessions() as s:
        return services.federation.authenticate_token(s, token)


def reason_of(services: Services, token: str) -> str:
    with pytest.raises(FederationRejected) as info:
        authenticate(services, token)
    assert str(info.value) == "the federated token is not accepted"  # uniform to clients
    return info.value.reason


def test_accepts_token_from_registered_issuer_via_discovery(fed_services: Services,
                                                            oidc_issuer: Any,
                                                            trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    fed = authenticate(fed_services, oidc_issuer.token())
    assert fed.identity_id == trainer.id
    assert fed.subject == "system:serviceaccount:ml:trainer"
    assert "/.well-known/openid-configuration" in oidc_issuer.requests
    assert "/jwks" in oidc_issuer.requests


def test_jwks_is_cached_between_tokens(fed_services: Services, oidc_issuer: Any,
                                       trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    authenticate(fed_services, oidc_issuer.token())
    authenticate(fed_services, oidc_issuer.token())
    assert oidc_issuer.requests.count("/jwks") == 1


def test_cache_expires_with_the_clock(fed_services: Services, oidc_issuer: Any,
                                      trainer: Any, clock: Any) -> None:
    register(fed_services, oidc_issuer.url)
    authenticate(fed_services, oidc_issuer.token())
    clock.advance(fed_services.settings.federation.jwks_cache_seconds + 1)
    with pytest.raises(FederationRejected):  # our clock is now ahead of the token's iat
        authenticate(fed_services, oidc_issuer.token(iat=int(clock.now().timestamp()),
                                                     exp=int(clock.now().timestamp()) + 60,
                                                     aud="nope"))
    assert oidc_issuer.requests.count("/jwks") == 2


def test_unknown_kid_refetches_once_then_is_rate_limited(fed_services: Services,
                                                         oidc_issuer: Any,
                                                         trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    authenticate(fed_services, oidc_issuer.token())
    new_key = oidc_issuer.rotate()  # the issuer rotates: a kid we have not seen
    assert authenticate(fed_services, oidc_issuer.token(key=new_key)).identity_id == trainer.id
    assert oidc_issuer.requests.count("/jwks") == 2
    stranger = RSAKey.generate_key(2048, private=True, parameters={"kid": "unknown"})
    for _ in range(3):
        assert "kid" in reason_of(fed_services, oidc_issuer.token(key=stranger))
    assert oidc_issuer.requests.count("/jwks") == 2  # no refetch storm


def test_rejects_token_from_unregistered_issuer(fed_services: Services, oidc_issuer: Any,
                                                other_issuer: Any, trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    assert reason_of(fed_services, other_issuer.token()) == "issuer is not registered"
    assert other_issuer.requests == []  # never fetched anything from an unknown issuer


def test_rejects_wrong_audience(fed_services: Services, oidc_issuer: Any, trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    assert "aud" in reason_of(fed_services, oidc_issuer.token(aud="someone-else"))


def test_rejects_expired_token(fed_services: Services, oidc_issuer: Any, trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    now = int(time.time())
    assert reason_of(fed_services, oidc_issuer.token(iat=now - 900, nbf=now - 900,
                                                     exp=now - 300)) == "token expired"


# Offsets from the time the test runs (not the time it was collected: a long suite would
# otherwise reach "600 s ahead" after it has passed).
@pytest.mark.parametrize("offsets,reason", [
    ({"nbf": 600}, "token not yet valid"),
    ({"iat": 600, "nbf": None}, "iat is in the future"),
    ({"iat": None}, "exp and iat are required"),
    ({"exp": None}, "exp and iat are required"),
    ({"iat": -3 * 86400}, "token is older than the maximum age"),
])
def test_rejects_bad_time_claims(fed_services: Services, oidc_issuer: Any, trainer: Any,
                                 offsets: dict[str, Any], reason: str) -> None:
    register(fed_services, oidc_issuer.url)
    now = int(time.time())
    claims = {k: None if v is None else now + v for k, v in offsets.items()}
    assert reason_of(fed_services, oidc_issuer.token(**claims)) == reason


def test_rejects_token_signed_by_key_not_in_issuers_jwks(fed_services: Services,
                                                         oidc_issuer: Any, trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    forger = RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})  # same kid
    assert "signature" in reason_of(fed_services, oidc_issuer.token(key=forger))


def test_rejects_hmac_and_none_algorithms(fed_services: Services, oidc_issuer: Any,
                                          trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    now = int(time.time())
    claims = {"iss": oidc_issuer.url, "sub": "system:serviceaccount:ml:trainer",
              "aud": "tessera", "iat": now, "exp": now + 60}
    hs = jwt.encode({"alg": "HS256", "kid": "k1"}, claims, OctKey.generate_key(256))
    assert "algorithm" in reason_of(fed_services, hs)
    header = jwt.encode({"alg": "HS256"}, claims, OctKey.generate_key(256)).split(".")
    import base64
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert "algorithm" in reason_of(fed_services, f"{none_header}.{header[1]}.")


def test_rejects_claims_that_map_to_nothing(fed_services: Services, oidc_issuer: Any,
                                            trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    token = oidc_issuer.token(sub="system:serviceaccount:ml:intruder")
    assert reason_of(fed_services, token) == "no mapping rule matches the token's claims"


def test_rejects_mapping_to_an_inactive_identity(fed_services: Services, oidc_issuer: Any,
                                                 trainer: Any) -> None:
    register(fed_services, oidc_issuer.url)
    with fed_services.sessions() as s:
        fed_services.identities.suspend(s, trainer.id, actor="test")
        s.commit()
    assert "not active" in reason_of(fed_services, oidc_issuer.token())


def test_rejects_mapping_to_an_identity_of_another_kind(fed_services: Services,
                                                        oidc_issuer: Any,
                                                        make_identity: Any) -> None:
    make_identity("trainer", kind="agent")  # same name, different kind
    register(fed_services, oidc_issuer.url)
    assert "does not exist" in reason_of(fed_services, oidc_issuer.token())


def test_ci_template_maps_repository_and_ref(fed_services: Services, oidc_issuer: Any,
                                             make_identity: Any) -> None:
    ci = make_identity("ci-acme_webapp-refs_heads_main", kind="pipeline")
    register(fed_services, oidc_issuer.url, name="ci", audiences=["https://tessera.example"],
             rules=[{"match": {"repository_owner": "acme", "ref": "refs/heads/main"},
                     "identity": "pipeline/ci-{repository}-{ref}"}])
    ok = oidc_issuer.token(aud="https://tessera.example", sub="repo:acme/webapp:ref:main",
                           repository="acme/webapp", repository_owner="acme",
                           ref="refs/heads/main")
    assert authenticate(fed_services, ok).identity_id == ci.id
    other_owner = oidc_issuer.token(aud="https://tessera.example", repository="evil/webapp",
                                    repository_owner="evil", ref="refs/heads/main")
    assert "no mapping rule" in reason_of(fed_services, other_owner)
    tag = oidc_issuer.token(aud="https://tessera.example", repository="acme/webapp",
                            repository_owner="acme", ref="refs/tags/v1")
    assert "no mapping rule" in reason_of(fed_services, tag)


def test_static_jwks_needs_no_fetch(fed_services: Services, oidc_issuer: Any,
                                    trainer: Any) -> None:
    register(fed_services, oidc_issuer.url, jwks=oidc_issuer.jwks())
    assert authenticate(fed_services, oidc_issuer.token()).identity_id == trainer.id
    assert oidc_issuer.requests == []


def test_same_host_redirect_is_followed(fed_services: Services, oidc_issuer: Any,
                                        trainer: Any) -> None:
    register(fed_services, oidc_issuer.url, jwks_uri=f"{oidc_issuer.url}/same-host-redirect")
    assert authenticate(fed_services, oidc_issuer.token()).identity_id == trainer.id


def test_refuses_redirect_to_another_host(fed_services: Services, oidc_issuer: Any,
                                          other_issuer: Any, trainer: Any) -> None:
    oidc_issuer.redirect_to = f"{other_issuer.url}/jwks"
    register(fed_services, oidc_issuer.url, jwks_uri=f"{oidc_issuer.url}/other-host-redirect")
    assert "redirect to another host" in reason_of(fed_services, oidc_issuer.token())
    assert other_issuer.requests == []


def test_never_answering_jwks_fails_within_bounded_time(fed_services: Services,
                                                        oidc_issuer: Any, trainer: Any) -> None:
    register(fed_services, oidc_issuer.url, jwks_uri=f"{oidc_issuer.url}/hang")
    started = time.monotonic()
    assert "timed out" in reason_of(fed_services, oidc_issuer.token())
    # The deadline is 3 s; the bound checked is loose on purpose (a slow CI machine).
    assert time.monotonic() - started < 15


def test_refuses_oversize_document(fed_services: Services, oidc_issuer: Any,
                                   trainer: Any) -> None:
    register(fed_services, oidc_issuer.url, jwks_uri=f"{oidc_issuer.url}/big-jwks")
    assert "too large" in reason_of(fed_services, oidc_issuer.token())


def test_plain_http_issuer_refused_unless_allowed(services: Services, oidc_issuer: Any) -> None:
    with services.sessions() as s, pytest.raises(ValidationFailed, match="https"):
        services.federation.add(s, IssuerCreate(name="k8s", issuer=oidc_issuer.url,
                                                audiences=["tessera"]), actor="test")
    with pytest.raises(FetchError, match="https"):
        services.federation.fetcher.get_json(f"{oidc_issuer.url}/jwks")
    assert oidc_issuer.requests == []


@pytest.mark.parametrize("rule", [
    {"match": {}, "identity": "trainer"},
    {"match": {"sub": "x"}, "identity": "Trainer!"},
    {"match": {"sub": "x"}, "identity": "ci-{repo"},
    {"match": {"sub": {"regex": ".*"}}, "identity": "trainer"},
])
def test_rejects_malformed_rules(rule: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MappingRule(**rule)


def test_rejects_private_keys_in_static_jwks(fed_services: Services, oidc_issuer: Any) -> None:
    with fed_services.sessions() as s, pytest.raises(ValidationFailed):
        fed_services.federation.add(s, IssuerCreate(
            name="k8s", issuer=oidc_issuer.url, audiences=["tessera"],
            jwks={"keys": [oidc_issuer.key.as_dict(private=True)]}), actor="test")


def test_https_issuer_with_private_ca_is_accepted(services: Services, tls_issuer: Any,
                                                  trainer: Any) -> None:
    issuer, ca_file = tls_issuer
    services.settings.federation.ca_bundle = ca_file  # https only: insecure http stays off
    register(services, issuer.url)
    assert authenticate(services, issuer.token()).identity_id == trainer.id
    assert "/jwks" in issuer.requests


def test_https_issuer_with_untrusted_certificate_is_refused(services: Services,
                                                            tls_issuer: Any,
                                                            trainer: Any) -> None:
    issuer, _ = tls_issuer
    register(services, issuer.url)
    assert "issuer keys unavailable" in reason_of(services, issuer.token())
    assert issuer.requests == []

"""One public key, one identity: a key (RFC 7638 thumbprint) registered on an identity is
refused on any other, whatever its kid or extra members, also once revoked; enforced by the
database too, so two registrations racing on two nodes cannot both win."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from sqlalchemy.exc import IntegrityError
from tests.conftest import Actor

from tessera.container import Services
from tessera.errors import Conflict
from tessera.identity.models import KeyClaimRow
from tessera.identity.schemas import CredentialCreate, IdentityCreate


def _public(key: ECKey, **members: Any) -> dict[str, Any]:
    return key.as_dict(private=False) | members


def _humans(services: Services, *names: str) -> list[str]:
    with services.sessions() as s:
        ids = [services.identities.register(s, IdentityCreate(name=n, kind="human"),
                                            actor="test").id for n in names]
        s.commit()
    return ids


def _add(services: Services, identity: str, jwk: dict[str, Any]) -> None:
    with services.sessions() as s:
        services.identities.add_credential(s, identity, CredentialCreate(jwk=jwk), actor="test")
        s.commit()


@pytest.mark.parametrize(("case", "members"), [
    ("rejects the same key on a second identity", {}),
    ("rejects the same key when it carries another kid", {"kid": "another-kid"}),
    ("rejects the same key when it carries alg and use", {"alg": "ES256", "use": "sig"}),
])
def test_a_key_registered_on_one_identity_is_refused_on_another(
        case: str, members: dict[str, Any], services: Services) -> None:
    first, second = _humans(services, "first", "second")
    key = ECKey.generate_key("P-256", private=True)
    _add(services, first, _public(key, kid="k1"))
    with pytest.raises(Conflict) as err:
        _add(services, second, _public(key, **members))
    assert err.value.code == "key_already_registered", case
    assert first not in err.value.message and "first" not in err.value.message
    with services.sessions() as s:
        assert services.identities.credentials(s, second) == []


def test_a_revoked_key_is_not_re_registrable_on_another_identity(services: Services) -> None:
    first, second = _humans(services, "first", "second")
    key = ECKey.generate_key("P-256", private=True)
    _add(services, first, _public(key))
    with services.sessions() as s:
        cred = services.identities.credentials(s, first)[0]
        services.identities.revoke_credential(s, first, cred.id, actor="test")
        s.commit()
    with pytest.raises(Conflict) as err:
        _add(services, second, _public(key))
    assert err.value.code == "key_already_registered"


def test_another_key_is_accepted_on_the_second_identity(services: Services) -> None:
    first, second = _humans(services, "first", "second")
    _add(services, first, _public(ECKey.generate_key("P-256", private=True)))
    _add(services, second, _public(ECKey.generate_key("P-256", private=True)))


def test_the_database_refuses_a_second_claim_of_one_thumbprint(services: Services) -> None:
    first, second = _humans(services, "first", "second")
    key = ECKey.generate_key("P-256", private=True)
    _add(services, first, _public(key))
    with services.sessions() as s:
        s.add(KeyClaimRow(thumbprint=key.thumbprint(), identity_id=second,
                          credential_id="crd_x", created_at=services.clock.now()))
        with pytest.raises(IntegrityError):
            s.flush()


def test_two_registrations_racing_for_one_key_leave_one_winner(services: Services) -> None:
    ids = _humans(services, "first", "second", "third", "fourth")
    jwk = _public(ECKey.generate_key("P-256", private=True))
    barrier = threading.Barrier(len(ids))
    outcomes: list[str] = []

    def register(identity: str) -> None:
        barrier.wait(10)
        try:
            _add(services, identity, jwk)
            outcomes.append("ok")
        except Conflict as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=register, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["key_already_registered"] * 3 + ["ok"]
    with services.sessions() as s:
        holders = [i for i in ids if services.identities.credentials(s, i)]
    assert len(holders) == 1


def test_the_api_answers_409_key_already_registered(
        app_client: TestClient, admin_headers: dict[str, str], admin: Actor,
        make_identity: Callable[..., Actor]) -> None:
    other = make_identity()
    resp = app_client.post(f"/v1/identities/{other.id}/credentials", headers=admin_headers,
                           json={"jwk": admin.key.as_dict(private=False) | {"kid": "mine"}})
    assert resp.status_code == 409, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == "key_already_registered"
    assert admin.id not in resp.text and admin.kid not in resp.text

"""The identity registry's rules, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey
from pydantic import ValidationError

from tessera.clock import FakeClock
from tessera.container import Services
from tessera.errors import Conflict, NotFound, ValidationFailed
from tessera.identity.models import CredentialRow
from tessera.identity.schemas import CredentialCreate, IdentityCreate, IdentityUpdate


@pytest.fixture
def owner(services: Services) -> str:
    with services.sessions() as s:
        row = services.identities.register(s, IdentityCreate(name="alice", kind="human"),
                                           actor="test")
        s.commit()
        return row.id


def agent(clock: FakeClock, owner_id: str | None, **kw: Any) -> IdentityCreate:
    fields: dict[str, Any] = {"name": "summariser", "kind": "agent", "owner": owner_id,
                              "purpose": "summarise", "expires_at": clock.now() + timedelta(days=7)}
    fields.update(kw)
    return IdentityCreate(**fields)


def test_register_derives_spiffe_id_and_client_id(services: Services, clock: FakeClock,
                                                  owner: str) -> None:
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        read = services.identities.read(s, row)
        s.commit()
    assert read.spiffe_id == "spiffe://example.org/agent/summariser"
    assert read.client_id == read.id and read.status == "active" and read.owner == owner


@pytest.mark.parametrize("case, overrides, code", [
    ("rejects agent without owner", {"owner": None}, "owner_required"),
    ("rejects agent without purpose", {"purpose": "  "}, "purpose_required"),
    ("rejects agent without expiry", {"expires_at": None}, "expiry_required"),
    ("rejects expiry in the past", {"expires_at": "past"}, "expiry_in_past"),
    ("rejects expiry beyond the maximum", {"expires_at": "far"}, "expiry_too_far"),
    ("rejects unknown owner", {"owner": "idn_nope"}, "owner_invalid"),
])
def test_register_rules(services: Services, clock: FakeClock, owner: str, case: str,
                        overrides: dict[str, Any], code: str) -> None:
    overrides = dict(overrides)
    if overrides.get("expires_at") == "past":
        overrides["expires_at"] = clock.now() - timedelta(seconds=1)
    if overrides.get("expires_at") == "far":
        overrides["expires_at"] = clock.now() + timedelta(days=91)
    with services.sessions() as s:
        with pytest.raises(ValidationFailed) as info:
            services.identities.register(s, agent(clock, overrides.pop("owner", owner),
                                                  **overrides), actor=owner)
        assert info.value.code == code
        s.rollback()
        names = [r.name for r in services.identities.list(s)[0]]
    assert names == ["alice"]  # nothing was written


def test_owner_must_be_active_human(services: Services, clock: FakeClock, owner: str) -> None:
    with services.sessions() as s:
        bot = services.identities.register(s, agent(clock, owner, name="bot"), actor=owner)
        with pytest.raises(ValidationFailed, match="active human"):
            services.identities.register(s, agent(clock, bot.id, name="child"), actor=owner)
        services.identities.suspend(s, owner, actor="test")
        with pytest.raises(ValidationFailed, match="active human"):
            services.identities.register(s, agent(clock, owner, name="child2"), actor=owner)


def test_names_are_unique(services: Services, clock: FakeClock, owner: str) -> None:
    with services.sessions() as s:
        services.identities.register(s, agent(clock, owner), actor=owner)
        with pytest.raises(Conflict):
            services.identities.register(s, agent(clock, owner), actor=owner)


@pytest.mark.parametrize("name", ["Upper", "-lead", "a b", "x" * 129, "spiffe/../x", ""])
def test_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        IdentityCreate(name=name, kind="human")


def test_rejects_unknown_kind_and_fields() -> None:
    with pytest.raises(ValidationError):
        IdentityCreate(name="a", kind="robot")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        IdentityCreate(name="a", kind="human", colour="red")  # type: ignore[call-arg]


def test_list_filters_and_paginates(services: Services, clock: FakeClock, owner: str) -> None:
    with services.sessions() as s:
        for i in range(5):
            clock.advance(0.01)  # ids are time-ordered
            services.identities.register(s, agent(clock, owner, name=f"a{i}"), actor=owner)
        services.identities.register(s, agent(clock, owner, name="m0", kind="model"),
                                     actor=owner)
        s.commit()
        page1, cursor = services.identities.list(s, kind="agent", limit=3)
        page2, cursor2 = services.identities.list(s, kind="agent", limit=3, cursor=cursor)
        assert [r.name for r in page1 + page2] == [f"a{i}" for i in range(5)]
        assert cursor2 is None
        assert [r.name for r in services.identities.list(s, kind="model")[0]] == ["m0"]
        assert len(services.identities.list(s, owner=owner)[0]) == 6
        assert [r.name for r in services.identities.list(s, status="active",
                                                          kind="human")[0]] == ["alice"]


def test_update_changes_fields_and_checks_expiry(services: Services, clock: FakeClock,
                                                 owner: str) -> None:
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        services.identities.update(s, row.id, IdentityUpdate(
            purpose="new", attributes={"team": "ml"}), actor=owner)
        assert (row.purpose, row.attributes) == ("new", {"team": "ml"})
        with pytest.raises(ValidationFailed, match="maximum"):
            services.identities.update(s, row.id, IdentityUpdate(
                expires_at=clock.now() + timedelta(days=400)), actor=owner)


def test_status_transitions(services: Services, clock: FakeClock, owner: str) -> None:
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        services.identities.suspend(s, row.id, actor=owner, reason="investigating")
        assert row.status == "suspended" and row.status_reason == "investigating"
        with pytest.raises(Conflict):
            services.identities.suspend(s, row.id, actor=owner)
        services.identities.resume(s, row.id, actor=owner)
        assert row.status == "active"
        services.identities.decommission(s, row.id, actor=owner, reason="retired")
        assert row.status == "decommissioned" and row.status_changed_by == owner
        for change in (services.identities.resume, services.identities.suspend,
                       services.identities.decommission):
            with pytest.raises(Conflict):
                change(s, row.id, actor=owner)
        with pytest.raises(Conflict):
            services.identities.update(s, row.id, IdentityUpdate(purpose="x"), actor=owner)


def test_decommission_revokes_credentials_and_notifies_subscribers(
        services: Services, clock: FakeClock, owner: str) -> None:
    seen: list[tuple[str, str]] = []
    services.identities.on_decommission(lambda _s, row, actor: seen.append((row.id, actor)))
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        for _ in range(2):
            services.identities.add_credential(s, row.id, CredentialCreate(
                jwk=ECKey.generate_key("P-256", private=True).as_dict(private=False)),
                actor=owner)
        services.identities.grant_role(s, row.id, "reader", actor=owner)
        services.identities.decommission(s, row.id, actor=owner, reason="done")
        s.commit()
        creds = services.identities.credentials(s, row.id)
        assert [c.status for c in creds] == ["revoked", "revoked"]
        assert all(c.revoked_at is not None for c in creds)
        assert services.identities.roles(s, row.id) == []
    assert seen == [(row.id, owner)]


def test_credentials_add_list_revoke(services: Services, clock: FakeClock, owner: str) -> None:
    key = ECKey.generate_key("P-256", private=True)
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        cred = services.identities.add_credential(
            s, row.id, CredentialCreate(jwk=key.as_dict(private=False)), actor=owner)
        assert cred.kid == key.thumbprint() and cred.expires_at == row.expires_at
        with pytest.raises(Conflict):
            services.identities.add_credential(
                s, row.id, CredentialCreate(jwk=key.as_dict(private=False)), actor=owner)
        with pytest.raises(NotFound):
            services.identities.revoke_credential(s, row.id, "crd_nope", actor=owner)
        services.identities.revoke_credential(s, row.id, cred.id, actor=owner)
        s.commit()
        stored = s.get(CredentialRow, cred.id)
        assert stored is not None and stored.status == "revoked"
        assert services.identities.usable_credentials(s, row.id, None) == []


def test_expired_credential_is_not_usable(services: Services, clock: FakeClock,
                                          owner: str) -> None:
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        services.identities.add_credential(s, row.id, CredentialCreate(
            jwk=ECKey.generate_key("P-256", private=True).as_dict(private=False),
            expires_at=clock.now() + timedelta(hours=1)), actor=owner)
        s.commit()
        assert len(services.identities.usable_credentials(s, row.id, None)) == 1
        clock.advance(hours=2)
        assert services.identities.usable_credentials(s, row.id, None) == []


def test_every_change_is_audited(services: Services, clock: FakeClock, owner: str) -> None:
    with services.sessions() as s:
        row = services.identities.register(s, agent(clock, owner), actor=owner)
        services.identities.suspend(s, row.id, actor=owner)
        services.identities.resume(s, row.id, actor=owner)
        services.identities.decommission(s, row.id, actor=owner)
        s.commit()
        types = [e.type for e in services.audit.events(s, subject=row.id)]
    assert types == ["identity.identity.registered", "identity.identity.suspended",
                     "identity.identity.resumed", "identity.identity.decommissioned"]

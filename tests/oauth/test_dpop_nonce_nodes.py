"""DPoP server nonces (RFC 9449 §8) across nodes: one secret, shared through the database and
sealed with the master key, so a nonce from node B is accepted by node A."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from tests.conftest import ISSUER, Actor, make_services

from oauth_helpers import proof, token
from tessera.api.app import create_app
from tessera.clock import FakeClock
from tessera.config import Settings
from tessera.db.meta import get_meta
from tessera.oauth.nonces import NONCE_SECRET_META


def test_a_nonce_from_one_node_is_accepted_by_another(
        settings: Settings, clock: FakeClock, master_key: bytes,
        services: object, make_identity: Callable[..., Actor]) -> None:
    on = settings.model_copy(update={"tokens": settings.tokens.model_copy(
        update={"dpop_nonce": True})})
    node_a = make_services(on.model_copy(update={"node_id": "node-a"}), clock, master_key)
    node_b = make_services(on.model_copy(update={"node_id": "node-b"}), clock, master_key)
    agent = make_identity("nonce-agent")
    key = ECKey.generate_key("P-256", private=True)
    try:
        with TestClient(create_app(services=node_a, run_jobs=False), base_url=ISSUER) as a, \
                TestClient(create_app(services=node_b, run_jobs=False), base_url=ISSUER) as b:
            first = token(b, agent, dpop=proof(key))
            assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
            nonce = first.headers["DPoP-Nonce"]
            resp = token(a, agent, dpop=proof(key, nonce=nonce))
            assert resp.status_code == 200, resp.text
        with node_a.sessions() as s:
            stored = get_meta(s, NONCE_SECRET_META)
        # Sealed (Fernet), never the secret's hex in the clear.
        assert stored is not None and not re.fullmatch(r"[0-9a-f]{64}", stored)
        assert node_a.lifecycle._nonce_secret == node_b.lifecycle._nonce_secret
    finally:
        node_a.close()
        node_b.close()


def test_a_node_with_another_master_key_fails_loudly(
        settings: Settings, clock: FakeClock, master_key: bytes, services: object,
        make_identity: Callable[..., Actor]) -> None:
    from cryptography.fernet import Fernet
    from pydantic import SecretStr

    on = settings.model_copy(update={"tokens": settings.tokens.model_copy(
        update={"dpop_nonce": True})})
    node_a = make_services(on, clock, master_key)
    agent = make_identity("nonce-agent-2")
    key = ECKey.generate_key("P-256", private=True)
    try:
        with TestClient(create_app(services=node_a, run_jobs=False), base_url=ISSUER) as a:
            assert token(a, agent, dpop=proof(key)).json()["error"] == "use_dpop_nonce"
        other = Fernet.generate_key()
        node_b = make_services(on.model_copy(update={"master_key": SecretStr(other.decode())}), clock,
                               other)
        try:
            from tessera.sealing import SealError
            with node_b.sessions() as s:
                try:
                    node_b.lifecycle._nonces(lambda: s)
                except SealError:
                    pass
                else:
                    raise AssertionError("a wrong master key opened the nonce secret")

        finally:
            node_b.close()
    finally:
        node_a.close()

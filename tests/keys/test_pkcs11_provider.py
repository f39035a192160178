"""PKCS#11 KeyProvider against SoftHSM2: keys stay in the token, signatures verify outside."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet

from tessera.api.app import create_app
from tessera.clock import FakeClock
from tessera.config import KeySettings, Settings
from tessera.container import Services, build, make_key_provider
from tessera.db.meta import set_meta
from tessera.keys.jws import sign_compact
from tessera.keys.software import KeyProviderError, SoftwareKeyProvider

pkcs11 = pytest.importorskip("pkcs11")
from pkcs11 import Attribute, Mechanism, ObjectClass  # noqa: E402 - after the importorskip
from pkcs11.exceptions import PKCS11Error  # noqa: E402
from tests.keys.hsm_helpers import make_csr_pem, register  # noqa: E402

from tessera.keys.pkcs11 import PKCS11KeyProvider, _lib  # noqa: E402


@pytest.fixture
def hsm_provider(softhsm: Any) -> Iterator[PKCS11KeyProvider]:
    provider = PKCS11KeyProvider(softhsm.module, softhsm.label, softhsm.pin)
    yield provider
    provider.close()


@pytest.fixture(params=["pkcs11", "software"])
def any_provider(request: pytest.FixtureRequest, master_key: bytes) -> Any:
    if request.param == "software":
        return SoftwareKeyProvider(master_key)
    return request.getfixturevalue("hsm_provider")


@pytest.fixture
def hsm_services(settings: Settings, clock: FakeClock, any_provider: Any) -> Iterator[Services]:
    svc = build(settings, clock=clock, provider=any_provider, trust_domain="example.org")
    with svc.sessions() as s:
        set_meta(s, "trust_domain", "example.org")
        svc.keys.create(s, "ES256")
        svc.ca.ensure(s)
        s.commit()
    yield svc
    svc.close()


def _private_object(softhsm: Any, label: str) -> Any:
    from pkcs11.exceptions import UserAlreadyLoggedIn

    token = _lib(softhsm.module).get_token(token_label=softhsm.label)
    try:
        session = token.open(user_pin=softhsm.pin)
    except UserAlreadyLoggedIn:
        session = token.open()
    return session, session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)


def test_private_key_is_generated_in_token_and_not_extractable(
        hsm_provider: PKCS11KeyProvider, softhsm: Any) -> None:
    generated = hsm_provider.generate("kid-extract-test", "ES256")
    assert "d" not in generated.public_jwk
    assert b"kid-extract-test" in (generated.blob or b"")  # a label, no key material
    session, key = _private_object(softhsm, "kid-extract-test")
    try:
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.ALWAYS_SENSITIVE] is True
        assert key[Attribute.LOCAL] is True  # generated on the token, not imported
        with pytest.raises(PKCS11Error):
            key[Attribute.VALUE]
        wrapping = session.generate_key(pkcs11.KeyType.AES, 256, template={
            Attribute.WRAP: True, Attribute.TOKEN: False})
        with pytest.raises(PKCS11Error):
            wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        session.close()


def test_signature_made_in_token_verifies_with_published_key(
        hsm_provider: PKCS11KeyProvider) -> None:
    generated = hsm_provider.generate("kid-sign-test", "ES256")
    signer = hsm_provider.load_signer("kid-sign-test", "ES256", generated.blob)
    token = sign_compact(signer, {"hello": "hsm"})
    claims = jwt.decode(token, KeySet.import_key_set({"keys": [generated.public_jwk]}),
                        algorithms=["ES256"]).claims
    assert claims == {"hello": "hsm"}


def test_eddsa_is_refused_by_the_hsm_provider(hsm_provider: PKCS11KeyProvider) -> None:
    with pytest.raises(KeyProviderError):
        hsm_provider.generate("kid-ed", "EdDSA")


def test_tokens_and_certificates_verify_with_published_keys(hsm_services: Services) -> None:
    admin = register(hsm_services, "hsm-admin", kind="human", roles=("admin",))
    with TestClient(create_app(services=hsm_services, run_jobs=False),
                    base_url="http://tessera.test") as client:
        resp = client.post("/oauth2/token", data=admin.form())
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        jwks = client.get("/oauth2/jwks").json()
        bundle = client.get("/v1/ca/bundle").text
    jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    agent = register(hsm_services, "hsm-agent")
    with hsm_services.sessions() as s:
        issued = hsm_services.ca.issue(s, agent.id, make_csr_pem(), actor="test")
        s.commit()
    root = x509.load_pem_x509_certificate(bundle.encode())
    x509.load_pem_x509_certificate(issued.cert_pem.encode()).verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)


def test_key_rotation_with_either_provider(hsm_services: Services, any_provider: Any) -> None:
    admin = register(hsm_services, "rot-admin", kind="human", roles=("admin",))
    with TestClient(create_app(services=hsm_services, run_jobs=False),
                    base_url="http://tessera.test") as client:
        old_token = client.post("/oauth2/token", data=admin.form()).json()["access_token"]
        with hsm_services.sessions() as s:
            new_kid = hsm_services.keys.rotate(s, max_token_ttl=3600)
            s.commit()
        new_token = client.post("/oauth2/token", data=admin.form()).json()["access_token"]
        jwks = client.get("/oauth2/jwks").json()
    assert jwt.decode(new_token, KeySet.import_key_set(jwks)).header["kid"] == new_kid
    assert jwt.decode(old_token, KeySet.import_key_set(jwks)).header["kid"] != new_kid
    assert len(jwks["keys"]) == 2
    with hsm_services.sessions() as s:
        from sqlalchemy import text
        providers = {r[0] for r in s.execute(text("SELECT provider FROM signing_keys"))}
        purposes = sorted(r[0] for r in s.execute(text("SELECT purpose FROM signing_keys")))
    assert providers == {any_provider.name}
    assert purposes == ["ca", "token", "token"]  # rotation never touched the CA key


def test_settings_select_the_pkcs11_provider(softhsm: Any, tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path, keys=KeySettings(
        provider="pkcs11", pkcs11_module=softhsm.module, pkcs11_token_label=softhsm.label,
        pkcs11_pin=softhsm.pin))
    provider = make_key_provider(settings)
    assert isinstance(provider, PKCS11KeyProvider)
    provider.close()
    with pytest.raises(KeyProviderError, match="PKCS11_PIN"):
        make_key_provider(Settings(data_dir=tmp_path, keys=KeySettings(provider="pkcs11")))


def test_wrong_pin_fails_without_echoing_it(softhsm: Any) -> None:
    with pytest.raises(KeyProviderError) as info:
        PKCS11KeyProvider(softhsm.module, softhsm.label, "999999-wrong")
    assert "999999-wrong" not in str(info.value)

"""The built-in CA: SVIDs per the SPIFFE X.509-SVID standard, and every refusal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ca_helpers import make_csr, new_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi.testclient import TestClient

from tessera.ca.svid import spiffe_ids, verify_chain, x5t_s256
from tessera.container import Services
from tessera.errors import Forbidden, ValidationFailed


def spiffe(name: str, kind: str = "agent") -> str:
    return f"spiffe://example.org/{kind}/{name}"


def issue(services: Services, identity: str, csr: str, **kw: Any) -> Any:
    with services.sessions() as s:
        try:
            out = services.ca.issue(s, identity, csr, actor="test", **kw)
        finally:
            s.commit()  # as the router does: refusals keep their audit event
        return out


def test_init_creates_root_once(ca_services: Services) -> None:
    with ca_services.sessions() as s:
        assert ca_services.ca.ensure(s) == []
        roots = ca_services.ca.roots(s)
    assert len(roots) == 1
    root = roots[0]
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    root.verify_directly_issued_by(root)


def test_issues_svid_with_only_the_spiffe_id(ca_services: Services, make_identity: Any,
                                             clock: Any) -> None:
    agent = make_identity("summariser")
    issued = issue(ca_services, agent.id, make_csr(new_key(), [spiffe("summariser")]))
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(spiffe("summariser"))]
    assert spiffe_ids(cert) == [spiffe("summariser")]
    assert cert.not_valid_after_utc - clock.now() == timedelta(hours=1)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with ca_services.sessions() as s:
        verify_chain(cert, [], ca_services.ca.roots(s), clock.now())
        listed = ca_services.ca.issued(s, agent.id)
        events = ca_services.audit.events(s, type="ca.certificate.issued")
    assert [r.serial for r in listed] == [issued.serial]
    assert listed[0].thumbprint == x5t_s256(cert.public_bytes(serialization.Encoding.DER))
    assert events[-1].subject == agent.id and events[-1].data["spiffe_id"] == spiffe("summariser")


def test_csr_without_san_gets_the_spiffe_id(ca_services: Services, make_identity: Any) -> None:
    agent = make_identity("bare")
    issued = issue(ca_services, agent.id, make_csr(new_key(), cn="bare"))
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert spiffe_ids(cert) == [spiffe("bare")]


def test_intermediate_chain(services: Services, make_identity: Any, clock: Any) -> None:
    with services.sessions() as s:
        created = services.ca.ensure(s, intermediate=True)
        s.commit()
    assert len(created) == 2
    agent = make_identity("chained")
    issued = issue(services, agent.id, make_csr(new_key()))
    assert issued.chain_pem
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    inter = x509.load_pem_x509_certificate(issued.chain_pem.encode())
    with services.sessions() as s:
        roots = services.ca.roots(s)
    cert.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(roots[0])
    verify_chain(cert, [inter], roots, clock.now())


@pytest.mark.parametrize("case", ["other_identity", "extra_dns", "two_uris", "foreign_cn",
                                  "weak_rsa", "bad_signature", "not_a_csr", "ca_request",
                                  "k1_curve"])
def test_refuses_bad_csrs(ca_services: Services, make_identity: Any, case: str) -> None:
    agent = make_identity("victim-or-not")
    other = make_identity("other-agent")
    key = new_key()
    own = spiffe("victim-or-not")
    if case == "other_identity":
        csr = make_csr(key, [spiffe(other.name)])
    elif case == "extra_dns":
        csr = make_csr(key, [own], dns=["db.internal"])
    elif case == "two_uris":
        csr = make_csr(key, [own, spiffe(other.name)])
    elif case == "foreign_cn":
        csr = make_csr(key, [own], cn="admin")
    elif case == "weak_rsa":
        csr = make_csr(rsa.generate_private_key(65537, 1024), [own])
    elif case == "k1_curve":
        csr = make_csr(ec.generate_private_key(ec.SECP256K1()), [own])
    elif case == "bad_signature":
        der = x509.load_pem_x509_csr(make_csr(key, [own]).encode()).public_bytes(
            serialization.Encoding.DER)
        tampered = der[:-3] + bytes([der[-3] ^ 0x01]) + der[-2:]
        import base64
        csr = ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(tampered).decode()
               + "-----END CERTIFICATE REQUEST-----\n")
    elif case == "ca_request":
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
            key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    else:
        csr = "hello"
    with pytest.raises(ValidationFailed) as info:
        issue(ca_services, agent.id, csr)
    assert info.value.code == "csr_rejected"
    with ca_services.sessions() as s:
        assert ca_services.ca.issued(s, agent.id) == []
        refused = ca_services.audit.events(s, type="ca.certificate.refused")
    assert refused and refused[-1].outcome == "failure"


def test_suspension_stops_issuance_at_once(ca_services: Services, make_identity: Any) -> None:
    agent = make_identity("soon-suspended")
    issue(ca_services, agent.id, make_csr(new_key()))
    with ca_services.sessions() as s:
        ca_services.identities.suspend(s, agent.id, actor="test")
        s.commit()
    with pytest.raises(Forbidden):
        issue(ca_services, agent.id, make_csr(new_key()))


def test_lifetime_is_capped_by_settings_and_identity_expiry(ca_services: Services,
                                                            make_identity: Any,
                                                            clock: Any) -> None:
    agent = make_identity("short-lived", expires_at=clock.now() + timedelta(minutes=20))
    issued = issue(ca_services, agent.id, make_csr(new_key()))
    assert issued.not_after == clock.now() + timedelta(minutes=20)
    with pytest.raises(ValidationFailed):
        issue(ca_services, agent.id, make_csr(new_key()),
              ttl=ca_services.settings.ca.max_svid_ttl + 1)


def test_api_issue_list_bundle(ca_services: Services, app_client: TestClient,
                               admin_headers: dict[str, str], make_identity: Any) -> None:
    agent = make_identity("api-agent")
    other = make_identity("api-other")
    token = app_client.post("/oauth2/token", data=agent.form()).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    resp = app_client.post("/v1/ca/certificates", headers=headers,
                           json={"csr": make_csr(new_key(), [spiffe("api-agent")])})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["spiffe_id"] == spiffe("api-agent") and "BEGIN CERTIFICATE" in body["bundle"]
    denied = app_client.post("/v1/ca/certificates", headers=headers,
                             json={"csr": make_csr(new_key()), "identity": other.id})
    assert denied.status_code == 403
    stolen = app_client.post("/v1/ca/certificates", headers=headers,
                             json={"csr": make_csr(new_key(), [spiffe("api-other")])})
    assert stolen.status_code == 422 and stolen.json()["code"] == "csr_rejected"
    by_admin = app_client.post("/v1/ca/certificates", headers=admin_headers,
                               json={"csr": make_csr(new_key()), "identity": other.id})
    assert by_admin.status_code == 201
    mine = app_client.get("/v1/ca/certificates", headers=headers).json()["items"]
    assert [c["serial"] for c in mine] == [body["serial"]]
    assert app_client.get(f"/v1/ca/certificates?identity={other.id}",
                          headers=headers).status_code == 403
    assert app_client.post("/v1/ca/certificates", json={"csr": "x"}).status_code == 401
    pem = app_client.get("/v1/ca/bundle")
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN CERTIFICATE-----")
    bundle = app_client.get("/.well-known/spiffe-bundle").json()
    assert bundle["keys"][0]["use"] == "x509-svid" and bundle["keys"][0]["crv"] == "P-256"
    import base64
    x5c = x509.load_der_x509_certificate(base64.b64decode(bundle["keys"][0]["x5c"][0]))
    assert x5c == x509.load_pem_x509_certificate(pem.text.encode())

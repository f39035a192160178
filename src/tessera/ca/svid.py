"""SPIFFE X.509-SVIDs — https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md

CSR validation and certificate templates for the CA. Pure functions: no storage, no web.
Section numbers below refer to the X509-SVID standard; RFC 5280 for X.509 itself.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_CSR_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
BACKDATE = timedelta(seconds=10)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class CSRRejected(Exception):
    """The CSR is refused; the message is client-safe."""


def x5t_s256(cert_der: bytes) -> str:
    """RFC 8705 §3.1: base64url SHA-256 of the DER certificate, no padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).rstrip(b"=").decode()


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    """The URI SANs of a certificate that are SPIFFE IDs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]


def check_public_key(key: object) -> PublicKey:
    """Refuse weak or unknown key types (RSA under 2048 bits, curves outside P-256/384/521)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CSRRejected("the CSR's EC key must be on P-256, P-384 or P-521")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CSRRejected(f"the CSR's RSA key must have at least {MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CSRRejected("the CSR's key type is not accepted")


def validate_csr(pem: str, spiffe_id: str, names: set[str]) -> PublicKey:
    """Check a PKCS#10 CSR may become an SVID for `spiffe_id`; return its public key.

    The only subject alternative name allowed is `spiffe_id` itself (§2: exactly one URI SAN);
    the subject may be empty or a single CN from `names`. Anything else is refused, not dropped,
    so a client never receives a certificate other than the one it asked for.
    """
    if len(pem) > MAX_CSR_BYTES:
        raise CSRRejected("the CSR is too large")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, TypeError) as exc:
        raise CSRRejected("the CSR is not a PEM PKCS#10 request") from exc
    if not csr.is_signature_valid:
        raise CSRRejected("the CSR's signature does not verify")
    try:
        key = check_public_key(csr.public_key())
    except (ValueError, TypeError) as exc:  # unsupported key encodings
        raise CSRRejected("the CSR's key type is not accepted") from exc
    for attr in csr.subject:
        if attr.oid != NameOID.COMMON_NAME or attr.value not in names | {spiffe_id}:
            raise CSRRejected("the CSR's subject names something other than this identity")
    for ext in csr.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            general = list(value)
            if any(not isinstance(n, x509.UniformResourceIdentifier) for n in general):
                raise CSRRejected("the CSR asks for names other than the SPIFFE ID")
            uris = [n.value for n in general]
            if uris != [spiffe_id]:
                raise CSRRejected("the CSR asks for a SPIFFE ID other than this identity's")
        elif isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise CSRRejected("the CSR asks for a CA certificate")
    return key


def _ski(key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def root_template(trust_domain: str, public: ec.EllipticCurvePublicKey, now: datetime,
                  days: int, path_length: int) -> x509.CertificateBuilder:
    """A self-signed signing certificate (§4.1: CA true, keyCertSign; URI SAN of the domain)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Tessera Root CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
            .add_extension(_ski(public), critical=False))


def intermediate_template(trust_domain: str, public: ec.EllipticCurvePublicKey,
                          issuer: x509.Certificate, now: datetime,
                          days: int) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Tessera Intermediate CA")])
    not_after = min(now + timedelta(days=days), issuer.not_valid_after_utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
            .add_extension(_ski(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key()), critical=False))  # type: ignore[arg-type]


def svid_template(public: PublicKey, spiffe_id: str, common_name: str,
                  issuer: x509.Certificate, not_before: datetime, not_after: datetime,
                  extra_names: Sequence[x509.GeneralName] = ()) -> x509.CertificateBuilder:
    """A leaf X.509-SVID (§4.3: CA false; digitalSignature; clientAuth and serverAuth).

    `extra_names` is for Tessera's own server certificate only (DNS names, addresses)."""
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            # §2: exactly one URI SAN, the SPIFFE ID.
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id), *extra_names]), critical=False)
            .add_extension(_ski(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key()), critical=False))  # type: ignore[arg-type]


def verify_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                 roots: list[x509.Certificate], now: datetime) -> None:
    """Check `leaf` chains to one of `roots` and every certificate is valid at `now`.

    Raises ValueError. Used to re-check client certificates handed over by the ASGI server.
    """
    chain = [leaf]
    current = leaf
    pool = list(intermediates) + list(roots)
    for _ in range(4):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise ValueError("certificate outside its validity period")
        if any(current == r for r in roots):
            return
        issuer = next((c for c in pool if c.subject == current.issuer and c != current), None)
        if issuer is None:
            raise ValueError("no issuer in the trust bundle")
        try:
            current.verify_directly_issued_by(issuer)
        except Exception as exc:
            raise ValueError("signature does not verify") from exc
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise ValueError("issuer is not a CA")
        chain.append(issuer)
        current = issuer
    raise ValueError("chain too long")


__all__ = ["CSRRejected", "cert_der", "cert_pem", "check_public_key",
           "intermediate_template", "root_template", "spiffe_ids", "svid_template",
           "validate_csr", "verify_chain", "x5t_s256"]

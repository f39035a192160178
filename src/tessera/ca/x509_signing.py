"""Sign X.509 certificates with a `Signer` whose private key may live in an HSM.

`cryptography` only signs with key objects it holds. So the TBSCertificate is built by
`cryptography` (signed once with a throw-away key of the same algorithm, which fixes the
`signature` algorithm identifier inside the TBS), then the real signature over the TBS bytes is
made by the Signer and the Certificate SEQUENCE (RFC 5280 §4.1) is re-assembled around it.
Only the outer three-element SEQUENCE is touched here; everything inside comes from
`cryptography`, and the result is parsed back and verified against the issuer's public key.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from tessera.keys.ports import Signer


class CertificateSigningError(Exception):
    """The certificate could not be signed or did not verify after signing."""


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """DER TLV at `pos`: returns (tag, start of value, end of value)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise CertificateSigningError("unsupported DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    return tag, pos, pos + length


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer,
                     issuer_public: ec.EllipticCurvePublicKey) -> x509.Certificate:
    """Sign `builder` with `signer` (ES256 only: ECDSA P-256 with SHA-256)."""
    if signer.alg != "ES256":
        raise CertificateSigningError("the CA signs with ES256 (ECDSA P-256) keys only")
    dummy = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    der = dummy.public_bytes(Encoding.DER)
    tag, start, end = _read_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise CertificateSigningError("unexpected certificate encoding")
    _, _, tbs_end = _read_tlv(der, start)
    tbs = der[start:tbs_end]
    _, _, alg_end = _read_tlv(der, tbs_end)
    alg = der[tbs_end:alg_end]
    raw = signer.sign(tbs)  # JWS form: r || s, 32 bytes each (RFC 7518 §3.4)
    if len(raw) != 64:
        raise CertificateSigningError("signer returned a malformed signature")
    sig = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    # BIT STRING with zero unused bits (RFC 5280 §4.1.1.3).
    body = tbs + alg + _tlv(0x03, b"\x00" + sig)
    cert = x509.load_der_x509_certificate(_tlv(0x30, body))
    try:
        issuer_public.verify(cert.signature, cert.tbs_certificate_bytes,
                             ec.ECDSA(hashes.SHA256()))
    except Exception as exc:
        raise CertificateSigningError("the signature does not verify with the CA key") from exc
    return cert


"""Signing cost through PKCS#11 (SoftHSM2) beside the software provider, same key type (ES256).

Three levels, each for both providers in the same run: one raw JWS signature (`Signer.sign`),
one access token (RFC 9068 JWT), and one CA certificate signature over a TBSCertificate.
SoftHSM2 is a software token: a hardware HSM's figures differ (usually slower per signature,
with its own parallelism); this measures the PKCS#11 path's overhead.

    .venv/bin/python bench/pkcs11_signing.py [--n 500]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import rate, softhsm_token

from tessera.ca.x509_signing import sign_certificate
from tessera.keys.jws import sign_compact
from tessera.keys.software import SoftwareKeyProvider


def measure(provider: object, n: int) -> tuple[float, float, float]:
    from joserfc.jwk import ECKey

    gen = provider.generate("bench-key", "ES256")  # type: ignore[attr-defined]
    signer = provider.load_signer("bench-key", "ES256", gen.blob)  # type: ignore[attr-defined]
    public = ECKey.import_key(gen.public_jwk).public_key
    claims = {"iss": "http://tessera.bench", "sub": "idn_x", "aud": "http://tessera.bench",
              "exp": 2_000_000_000, "iat": 1_700_000_000, "jti": "x", "scope": "a b"}
    leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(leaf)
               .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(hours=1)))
    raw = rate(lambda: signer.sign(b"x" * 300), n)
    jwt_rate = rate(lambda: sign_compact(signer, claims, typ="at+jwt"), n)
    cert_rate = rate(lambda: sign_certificate(builder, signer, public), max(n // 5, 20))
    provider.destroy("bench-key", gen.blob)  # type: ignore[attr-defined]
    return raw, jwt_rate, cert_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    module, label, pin = softhsm_token()
    from tessera.keys.pkcs11 import PKCS11KeyProvider

    hsm = measure(PKCS11KeyProvider(module, label, pin), args.n)
    soft = measure(SoftwareKeyProvider(Fernet.generate_key()), args.n)
    print(f"{'per second':32} {'software':>10} {'pkcs11':>10} {'pkcs11/sw':>10}")
    for label_, s, h in zip(("raw ES256 signature", "access token (JWT)",
                             "certificate (sign + verify)"), soft, hsm):
        print(f"{label_:32} {s:10.1f} {h:10.1f} {h / s:10.2f}")
    print(f"{'us per raw signature':32} {1e6 / soft[0]:10.1f} {1e6 / hsm[0]:10.1f}")


if __name__ == "__main__":
    main()

"""Certificate issuance per second: CSR -> X.509-SVID, audited and recorded, per transaction.

In process, on SQLite, with the software key provider. Baseline in the same run: the bare
`cryptography` cost of building and signing one certificate with an in-memory key (no CSR
checks, no HSM-capable signing path, no database), so the ratio shows Tessera's overhead.

    .venv/bin/python bench/cert_issuance.py [--n 300]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import installation, rate, register


def csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    svc, _ = installation()
    identity_id, _, _ = register(svc, "worker", kind="service")
    csrs = [csr() for _ in range(args.n + 5)]  # client-side cost, not the server's

    def issue() -> None:
        with svc.sessions() as s:
            svc.ca.issue(s, identity_id, csrs.pop(), actor="bench")
            s.commit()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])

    def bare() -> None:
        now = datetime.now(UTC)
        (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(leaf)
         .serial_number(x509.random_serial_number()).not_valid_before(now)
         .not_valid_after(now + timedelta(hours=1))
         .add_extension(x509.SubjectAlternativeName(
             [x509.UniformResourceIdentifier("spiffe://bench.local/service/worker")]),
             critical=False)
         .sign(ca_key, hashes.SHA256()))

    tessera = rate(issue, args.n)
    base = rate(bare, args.n * 5)
    print(f"Tessera SVID issuance (CSR checks, sign, audit, commit): {tessera:8.1f} certs/s")
    print(f"baseline bare cryptography sign                       : {base:8.1f} certs/s")
    print(f"ratio Tessera / baseline                              : {tessera / base:8.3f}")


if __name__ == "__main__":
    main()

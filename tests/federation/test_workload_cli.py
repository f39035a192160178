"""`tessera federation` rule syntax and `tessera ca` local commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from tessera.bootstrap import init
from tessera.cli.main import app
from tessera.cli.workload import _parse_rule
from tessera.config import Settings
from tessera.federation.schemas import MappingRule


@pytest.mark.parametrize("text,expected", [
    ("sub=system:serviceaccount:ml:trainer->pipeline/trainer",
     {"match": {"sub": "system:serviceaccount:ml:trainer"}, "identity": "pipeline/trainer"}),
    ("repository_owner=acme,ref=refs/heads/*->pipeline/ci-{repository}",
     {"match": {"repository_owner": "acme", "ref": {"glob": "refs/heads/*"}},
      "identity": "pipeline/ci-{repository}"}),
    ('{"match": {"sub": ["a", "b"]}, "identity": "x"}',
     {"match": {"sub": ["a", "b"]}, "identity": "x"}),
])
def test_rule_syntax(text: str, expected: dict) -> None:
    rule = _parse_rule(text)
    assert rule == expected
    MappingRule(**rule)


def test_ca_bundle_and_server_cert_from_local_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init(Settings(data_dir=data), "example.org")
    runner = CliRunner()
    bundle = runner.invoke(app, ["ca", "bundle", "--data-dir", str(data)])
    assert bundle.exit_code == 0, bundle.output
    root = x509.load_pem_x509_certificate(bundle.output.encode())
    out = runner.invoke(app, ["ca", "server-cert", "--data-dir", str(data), "--dns", "localhost"])
    assert out.exit_code == 0, out.output
    cert = x509.load_pem_x509_certificate((data / "tls" / "server.pem").read_bytes())
    cert.verify_directly_issued_by(root)
    assert (data / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["ca", "init", "--data-dir", str(data)])
    assert "exists already" in again.output

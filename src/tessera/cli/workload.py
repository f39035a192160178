"""`tessera federation ...` and `tessera ca ...`: workload identity without secrets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tessera.cli.client import Api, CLIError
from tessera.cli.common import DataDir, JsonOut, emit, fail, run, settings_for
from tessera.config import Settings

federation_app = typer.Typer(help="Trusted external issuers (workload identity federation).",
                             no_args_is_help=True)
ca_app = typer.Typer(help="The built-in certificate authority (SPIFFE X.509-SVIDs).",
                     no_args_is_help=True)

def _settings(data_dir: Path | None) -> Settings:
    return settings_for(data_dir)


_emit, _run, _fail = emit, run, fail


def _parse_rule(text: str) -> dict[str, Any]:
    """`CLAIM=VALUE[,CLAIM=VALUE...]->IDENTITY`; VALUE with * ? [ is a glob; or JSON."""
    if text.lstrip().startswith("{"):
        try:
            rule: dict[str, Any] = json.loads(text)
        except ValueError:
            _fail(f"rule {text!r} is not valid JSON")
            raise
        return rule
    conditions, sep, identity = text.partition("->")
    if not sep or not identity.strip():
        _fail(f"rule {text!r} must look like CLAIM=VALUE[,CLAIM=VALUE]->IDENTITY")
    match: dict[str, Any] = {}
    for cond in conditions.split(","):
        claim, eq, value = cond.partition("=")
        if not eq:
            _fail(f"condition {cond!r} must be CLAIM=VALUE")
        value = value.strip()
        match[claim.strip()] = {"glob": value} if any(c in value for c in "*?[") else value
    return {"match": match, "identity": identity.strip()}


# -- federation ------------------------------------------------------------------------------

@federation_app.command("add")
def federation_add(
        name: str,
        issuer: Annotated[str, typer.Option(help="The tokens' iss (an https URL).")],
        audience: Annotated[list[str], typer.Option(help="Accepted aud; repeatable.")],
        rule: Annotated[list[str] | None, typer.Option(
            help="Mapping rule 'CLAIM=VALUE[,CLAIM=VALUE]->[KIND/]IDENTITY' (templates "
                 "'{claim}' allowed) or JSON; repeatable.")] = None,
        jwks_uri: Annotated[str | None, typer.Option(
            help="JWKS URL (default: from the issuer's discovery document).")] = None,
        jwks_file: Annotated[Path | None, typer.Option(
            help="Static JWKS file instead of fetching.")] = None,
        as_json: JsonOut = False) -> None:
    """Register a trusted issuer (Kubernetes cluster, CI provider, cloud)."""
    body: dict[str, Any] = {"name": name, "issuer": issuer, "audiences": audience,
                            "rules": [_parse_rule(r) for r in rule or []]}
    if jwks_uri:
        body["jwks_uri"] = jwks_uri
    if jwks_file:
        try:
            body["jwks"] = json.loads(jwks_file.read_text())
        except (OSError, ValueError):
            _fail(f"cannot read a JWKS from {jwks_file}")
    _emit(_run(lambda: Api(Settings()).call("POST", "/v1/federation/issuers", json=body)),
          as_json)


@federation_app.command("list")
def federation_list(as_json: JsonOut = False) -> None:
    """List trusted issuers."""
    _emit(_run(lambda: Api(Settings()).call("GET", "/v1/federation/issuers")), as_json,
          ["id", "name", "issuer", "audiences", "enabled"])


@federation_app.command("show")
def federation_show(issuer: str, as_json: JsonOut = False) -> None:
    """Show one issuer (by id or name)."""
    _emit(_run(lambda: Api(Settings()).call("GET", f"/v1/federation/issuers/{issuer}")),
          as_json)


@federation_app.command("set-rules")
def federation_set_rules(issuer: str, rule: Annotated[list[str], typer.Option(
        help="Replacement mapping rules; repeatable.")], as_json: JsonOut = False) -> None:
    """Replace an issuer's mapping rules."""
    body = {"rules": [_parse_rule(r) for r in rule]}
    _emit(_run(lambda: Api(Settings()).call("PATCH", f"/v1/federation/issuers/{issuer}",
                                            json=body)), as_json)


@federation_app.command("remove")
def federation_remove(issuer: str) -> None:
    """Remove a trusted issuer: its tokens are refused from now on."""
    _run(lambda: Api(Settings()).call("DELETE", f"/v1/federation/issuers/{issuer}"))
    print(f"removed {issuer}")


# -- ca --------------------------------------------------------------------------------------

def _local_services(data_dir: Path | None) -> Any:
    from tessera.container import build

    settings = _settings(data_dir)
    if not settings.database_url and not (settings.data_dir / "tessera.db").exists():
        _fail(f"no database in {settings.data_dir}; run `tessera init` first")
    return build(settings)


@ca_app.command("init")
def ca_init(data_dir: DataDir = None,
            intermediate: Annotated[bool, typer.Option(
                help="Also create an intermediate CA.")] = False) -> None:
    """Create the CA in an existing installation (`tessera init` does this for new ones)."""
    svc = _local_services(data_dir)
    try:
        with svc.sessions() as s:
            created = svc.ca.ensure(s, intermediate=intermediate or None)
            s.commit()
    finally:
        svc.close()
    print("\n".join(f"created {c}" for c in created) or "the CA exists already")


@ca_app.command("bundle")
def ca_bundle(data_dir: DataDir = None,
              out: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
              server: Annotated[bool, typer.Option(
                  help="Ask the running server instead of the local database.")] = False
              ) -> None:
    """Print the trust bundle (PEM root certificates)."""
    if server:
        import httpx

        settings = Settings()
        try:
            pem = httpx.get(f"{settings.server_url}/v1/ca/bundle", timeout=10).text
        except httpx.HTTPError as exc:
            _fail(f"cannot reach Tessera at {settings.server_url}: {exc}")
            return
    else:
        svc = _local_services(data_dir)
        try:
            with svc.sessions() as s:
                pem = svc.ca.bundle_pem(s)
        finally:
            svc.close()
    if out:
        out.write_text(pem)
    else:
        sys.stdout.write(pem)


@ca_app.command("issue")
def ca_issue(identity: str,
             csr: Annotated[Path, typer.Option(help="PEM CSR file ('-' for stdin).")],
             ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
             out: Annotated[Path | None, typer.Option(
                 help="Write the certificate (and chain) here.")] = None,
             as_json: JsonOut = False) -> None:
    """Issue an X.509-SVID for an identity from its CSR (admin)."""
    text = sys.stdin.read() if str(csr) == "-" else csr.read_text()
    body: dict[str, Any] = {"csr": text, "identity": identity}
    if ttl:
        body["ttl"] = ttl
    result = _run(lambda: Api(Settings()).call("POST", "/v1/ca/certificates", json=body))
    if out:
        out.write_text(result["certificate"] + result.get("chain", ""))
        print(f"wrote {out} ({result['spiffe_id']}, until {result['not_after']})")
    else:
        _emit(result, as_json)


@ca_app.command("list")
def ca_list(identity: str, as_json: JsonOut = False) -> None:
    """List the certificates issued to an identity."""
    _emit(_run(lambda: Api(Settings()).call("GET", "/v1/ca/certificates",
                                            params={"identity": identity})), as_json,
          ["serial", "spiffe_id", "not_before", "not_after", "issued_by"])


@ca_app.command("server-cert")
def ca_server_cert(
        data_dir: DataDir = None,
        out_dir: Annotated[Path | None, typer.Option(
            help="Where to write server.pem, server-key.pem, ca-bundle.pem "
                 "(default: <data dir>/tls).")] = None,
        dns: Annotated[list[str] | None, typer.Option(help="DNS name; repeatable.")] = None,
        ip: Annotated[list[str] | None, typer.Option(help="IP address; repeatable.")] = None,
        days: Annotated[int, typer.Option(min=1, max=90)] = 7) -> None:
    """Issue Tessera's own TLS certificate from its CA, for `tessera serve --tls-*`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tessera.keys.software import write_secret_file

    svc = _local_services(data_dir)
    target = out_dir or svc.settings.data_dir / "tls"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        with svc.sessions() as s:
            cert, chain = svc.ca.issue_server_certificate(
                s, key.public_key(), dns_names=dns or ["localhost"],
                ip_addresses=ip or ["127.0.0.1"], days=days)
            bundle = svc.ca.bundle_pem(s)
            s.commit()
    except CLIError as exc:
        _fail(str(exc))
        return
    finally:
        svc.close()
    write_secret_file(target / "server-key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), replace=True)
    (target / "server.pem").write_text(cert + chain)
    (target / "ca-bundle.pem").write_text(bundle)
    print(f"wrote {target}/server.pem, server-key.pem (0600), ca-bundle.pem")

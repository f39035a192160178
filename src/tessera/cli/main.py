"""`tessera` command line. Thin: every command calls a service or the server's API."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from tessera.cli.access import access_app, secrets_app
from tessera.cli.client import Api, fetch_token
from tessera.cli.common import DataDir, JsonOut, emit, err, fail, out, run, settings_for
from tessera.cli.keys import keys_app
from tessera.cli.policy import policy_app, resource_app
from tessera.cli.workload import ca_app, federation_app
from tessera.config import Settings

app = typer.Typer(help="Tessera: identity and access control plane for AI systems.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
identity_app = typer.Typer(help="Register and manage identities.", no_args_is_help=True)
credential_app = typer.Typer(help="Manage an identity's public keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit log.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")
app.add_typer(credential_app, name="credential")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(policy_app, name="policy")
app.add_typer(resource_app, name="resource")
app.add_typer(federation_app, name="federation")
app.add_typer(ca_app, name="ca")
app.add_typer(keys_app, name="keys")


# -- init / serve / token --------------------------------------------------------------------

@app.command()
def init(data_dir: DataDir = None,
         trust_domain: Annotated[str | None, typer.Option(
             help="SPIFFE trust domain (default tessera.local).")] = None) -> None:
    """Create the database, a signing key and the bootstrap admin. Never overwrites."""
    from tessera.bootstrap import init as do_init

    settings = settings_for(data_dir)
    try:
        report = do_init(settings, trust_domain)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
        return
    for line in report.created:
        out.print(f"[green]created[/green]  {line}", highlight=False)
    for line in report.existing:
        out.print(f"[yellow]exists[/yellow]   {line}", highlight=False)
    for line in report.tightened:
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    out.print(f"admin client id: {report.admin_id}", highlight=False)


@app.command()
def serve(data_dir: DataDir = None,
          host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
          port: Annotated[int | None, typer.Option(help="Port (default 8700).")] = None,
          workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
          tls_cert: Annotated[Path | None, typer.Option(
              help="Serve HTTPS with this certificate (see `tessera ca server-cert`).")] = None,
          tls_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
          tls_client_ca: Annotated[Path | None, typer.Option(
              help="Verify client certificates against this bundle (default: Tessera's CA)."
          )] = None,
          tls_require_client_cert: Annotated[bool, typer.Option(
              help="Refuse connections without a client certificate.")] = False) -> None:
    """Start the server (OAuth authorization server and management API)."""
    import os

    import uvicorn

    from tessera.api.app import NotMigrated, check_ready
    from tessera.container import build

    settings = settings_for(data_dir, host=host, port=port)
    # Workers re-read settings from the environment: hand them what the flags said.
    os.environ["TESSERA_DATA_DIR"] = str(settings.data_dir)
    os.environ["TESSERA_HOST"] = settings.host
    os.environ["TESSERA_PORT"] = str(settings.port)
    if not settings.database_url and not (settings.data_dir / "tessera.db").exists():
        fail(f"no database in {settings.data_dir}; run `tessera init` first")
    from tessera.datadir import secure
    from tessera.db.engine import sqlite_path

    # Before any worker opens a file: keys and database readable by others are tightened.
    for line in secure(settings.data_dir, sqlite_path(settings.db_url)):
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    services = build(settings)
    try:
        check_ready(services)
    except NotMigrated as exc:
        fail(str(exc))
    finally:
        services.close()
    scheme = "https" if tls_cert else "http"
    out.print(f"Tessera listening on {scheme}://{settings.host}:{settings.port} "
              f"(issuer {settings.issuer_url})", highlight=False)
    out.print(f"Admin token:  TESSERA_DATA_DIR={settings.data_dir} tessera token",
              highlight=False)
    tls: dict[str, Any] = {}
    if tls_cert or tls_key:
        tls = tls_options(settings, tls_cert, tls_key, tls_client_ca, tls_require_client_cert)
        if not settings.issuer:
            os.environ["TESSERA_ISSUER"] = f"https://{settings.host}:{settings.port}"
    from tessera import serving

    options = {"host": settings.host, "port": settings.port, "log_level": log_level,
               "server_header": False, **tls,
               **serving.uvicorn_options(settings.http, tls=bool(tls))}

    if workers > 1 and serving.available():
        # One socket per worker (SO_REUSEPORT): connections spread evenly (tessera.serving).
        raise typer.Exit(serving.Supervisor(options, workers).run())
    uvicorn.run(serving.APP, factory=True, workers=workers, **options)


def tls_options(settings: Settings, cert: Path | None, key: Path | None,
                client_ca: Path | None, require: bool) -> dict[str, Any]:
    """uvicorn options for HTTPS with client certificates verified against the CA (RFC 8705).

    Client certificates reach the app through the ASGI TLS extension (tessera.api.tls), added
    by the protocol class `tessera.serving.uvicorn_options` picks for TLS.
    """
    import ssl

    if not (cert and key):
        fail("--tls-cert and --tls-key go together")
    if client_ca is None:
        from tessera.container import build

        svc = build(settings)
        try:
            with svc.sessions() as s:
                bundle = svc.ca.bundle_pem(s)
        finally:
            svc.close()
        if not bundle:
            fail("no CA in this installation; run `tessera ca init`")
        client_ca = settings.data_dir / "ca-bundle.pem"
        client_ca.write_text(bundle)
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_ca_certs": str(client_ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL}


@app.command()
def token(data_dir: DataDir = None) -> None:
    """Print a fresh admin access token (for scripts: TOKEN=$(tessera token))."""
    settings = settings_for(data_dir)
    print(run(lambda: fetch_token(settings)))


# -- identities ------------------------------------------------------------------------------

IDENTITY_COLUMNS = ["id", "name", "kind", "status", "owner", "expires_at", "spiffe_id"]


def parse_expiry(value: str | None) -> str | None:
    """Accept RFC 3339 or a duration like 30d / 12h."""
    if value is None:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[-1:] in units and value[:-1].isdigit():
        delta = timedelta(**{units[value[-1]]: int(value[:-1])})
        return (datetime.now(UTC) + delta).isoformat()
    return value


def parse_attrs(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    attrs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"attribute {pair!r} must be KEY=VALUE")
        try:
            attrs[key] = json.loads(value)
        except ValueError:
            attrs[key] = value
    return attrs


@identity_app.command("register")
def identity_register(
        name: str,
        kind: Annotated[str, typer.Option(help="agent, model, pipeline, service or human.")],
        owner: Annotated[str | None, typer.Option(help="Owner's identity id.")] = None,
        purpose: Annotated[str, typer.Option(help="What it is for.")] = "",
        expires: Annotated[str | None, typer.Option(
            help="Expiry: RFC 3339 time or a duration (30d, 12h).")] = None,
        attr: Annotated[list[str] | None, typer.Option(
            help="Attribute KEY=VALUE (VALUE may be JSON); repeatable.")] = None,
        scope: Annotated[list[str] | None, typer.Option(
            help="Allowed scope; repeatable.")] = None,
        audience: Annotated[list[str] | None, typer.Option(
            help="Allowed audience (resource URI); repeatable.")] = None,
        token_ttl: Annotated[int | None, typer.Option(
            help="Access token lifetime in seconds (30-3600).")] = None,
        dpop_required: Annotated[bool, typer.Option(
            "--dpop-required", help="Issue only DPoP-bound tokens.")] = False,
        may_act_for: Annotated[list[str] | None, typer.Option(
            help="Identity id it may act for ('*' = any human); repeatable.")] = None,
        as_json: JsonOut = False) -> None:
    """Register a new identity."""
    body: dict[str, Any] = {"name": name, "kind": kind, "purpose": purpose,
                            "attributes": parse_attrs(attr) or {}}
    if owner:
        body["owner"] = owner
    if expires:
        body["expires_at"] = parse_expiry(expires)
    if scope:
        body["allowed_scopes"] = scope
    if audience:
        body["allowed_audiences"] = audience
    body.update(_issue3_fields(token_ttl, dpop_required or None, may_act_for))
    emit(run(lambda: Api(Settings()).call("POST", "/v1/identities", json=body)), as_json)


def _issue3_fields(token_ttl: int | None, dpop_required: bool | None,
                   may_act_for: list[str] | None) -> dict[str, Any]:
    """Token lifetime, DPoP requirement and delegation rules (only those given)."""
    fields: dict[str, Any] = {"token_ttl": token_ttl, "dpop_required": dpop_required,
                              "may_act_for": may_act_for}
    return {k: v for k, v in fields.items() if v is not None}


@identity_app.command("list")
def identity_list(kind: Annotated[str | None, typer.Option()] = None,
                  status: Annotated[str | None, typer.Option()] = None,
                  owner: Annotated[str | None, typer.Option()] = None,
                  limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
                  cursor: Annotated[str | None, typer.Option()] = None,
                  as_json: JsonOut = False) -> None:
    """List identities (filters: kind, status, owner)."""
    params = {k: v for k, v in {"kind": kind, "status": status, "owner": owner,
                                "limit": limit, "cursor": cursor}.items() if v is not None}
    emit(run(lambda: Api(Settings()).call("GET", "/v1/identities", params=params)), as_json,
         IDENTITY_COLUMNS)


@identity_app.command("show")
def identity_show(identity: str, as_json: JsonOut = False) -> None:
    """Show one identity (by id or name)."""
    emit(run(lambda: Api(Settings()).call("GET", f"/v1/identities/{identity}")), as_json)


@identity_app.command("update")
def identity_update(
        identity: str,
        purpose: Annotated[str | None, typer.Option()] = None,
        expires: Annotated[str | None, typer.Option(help="RFC 3339 or 30d/12h.")] = None,
        attr: Annotated[list[str] | None, typer.Option(
            help="Replace attributes with these KEY=VALUE pairs.")] = None,
        scope: Annotated[list[str] | None, typer.Option(help="Replace allowed scopes.")
                         ] = None,
        audience: Annotated[list[str] | None, typer.Option(
            help="Replace allowed audiences.")] = None,
        token_ttl: Annotated[int | None, typer.Option(
            help="Access token lifetime in seconds (30-3600).")] = None,
        dpop_required: Annotated[bool | None, typer.Option(
            "--dpop-required/--no-dpop-required", help="Issue only DPoP-bound tokens.")] = None,
        may_act_for: Annotated[list[str] | None, typer.Option(
            help="Replace the identities it may act for ('*' = any human).")] = None,
        as_json: JsonOut = False) -> None:
    """Change an identity's purpose, expiry, attributes, scopes, audiences, token lifetime,
    DPoP requirement or delegation rules."""
    body: dict[str, Any] = {}
    if purpose is not None:
        body["purpose"] = purpose
    if expires is not None:
        body["expires_at"] = parse_expiry(expires)
    if attr is not None:
        body["attributes"] = parse_attrs(attr)
    if scope is not None:
        body["allowed_scopes"] = scope
    if audience is not None:
        body["allowed_audiences"] = audience
    body.update(_issue3_fields(token_ttl, dpop_required, may_act_for))
    if not body:
        fail("nothing to update: give at least one option")
    emit(run(lambda: Api(Settings()).call("PATCH", f"/v1/identities/{identity}", json=body)),
         as_json)


def _status_command(action: str, doc: str) -> None:
    def command(identity: str,
                reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
                as_json: JsonOut = False) -> None:
        emit(run(lambda: Api(Settings()).call("POST", f"/v1/identities/{identity}/{action}",
                                              json={"reason": reason})), as_json)

    command.__doc__ = doc
    identity_app.command(action)(command)


_status_command("suspend", "Suspend an identity: it can no longer authenticate.")
_status_command("resume", "Resume a suspended identity.")
_status_command("decommission",
                "Decommission an identity for good; revokes every credential it held.")


# -- credentials -----------------------------------------------------------------------------

@credential_app.command("add")
def credential_add(identity: str,
                   jwk_file: Annotated[Path, typer.Argument(
                       help="File with the public JWK ('-' for standard input).")],
                   expires: Annotated[str | None, typer.Option(
                       help="RFC 3339 or 30d/12h (default: the identity's expiry).")] = None,
                   as_json: JsonOut = False) -> None:
    """Register a public key (JWK) for an identity."""
    text = sys.stdin.read() if str(jwk_file) == "-" else jwk_file.read_text()
    try:
        jwk = json.loads(text)
    except ValueError:
        fail("the JWK file is not valid JSON")
    body: dict[str, Any] = {"jwk": jwk}
    if expires:
        body["expires_at"] = parse_expiry(expires)
    emit(run(lambda: Api(Settings()).call("POST", f"/v1/identities/{identity}/credentials",
                                          json=body)), as_json)


@credential_app.command("list")
def credential_list(identity: str, as_json: JsonOut = False) -> None:
    """List an identity's credentials."""
    emit(run(lambda: Api(Settings()).call("GET", f"/v1/identities/{identity}/credentials")),
         as_json, ["id", "kid", "status", "expires_at", "last_used_at"])


@credential_app.command("revoke")
def credential_revoke(identity: str, credential_id: str, as_json: JsonOut = False) -> None:
    """Revoke one credential."""
    emit(run(lambda: Api(Settings()).call(
        "DELETE", f"/v1/identities/{identity}/credentials/{credential_id}")), as_json)


# -- audit / db ------------------------------------------------------------------------------

AUDIT_COLUMNS = ["seq", "ts", "type", "outcome", "actor", "subject", "resource"]


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None,
                 file: Annotated[Path | None, typer.Option(
                     "--file", help="Verify a JSON Lines export instead of the database.")
                                 ] = None,
                 jwks: Annotated[Path | None, typer.Option(
                     help="Trusted JWKS file for the checkpoint signatures (default: the "
                          "database's keys, or the one inside the export).")] = None,
                 as_json: JsonOut = False) -> None:
    """Check every event, link, and signed checkpoint; name each tampered spot."""
    from tessera.audit.export import verify_lines

    trusted = None
    if jwks is not None:
        try:
            trusted = json.loads(jwks.read_text())
        except (OSError, ValueError):
            fail(f"{jwks} is not a readable JWKS file")
    if file is not None:
        try:
            with file.open(encoding="utf-8") as fh:
                report = verify_lines(fh, jwks=trusted)
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
            return
    else:
        from tessera.container import build
        from tessera.db import make_session_factory

        services = build(settings_for(data_dir))
        try:
            with make_session_factory(services.engine, readonly=True)() as session:
                report = services.audit.verify(session, jwks=trusted or _db_jwks(services))
        finally:
            services.close()
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        out.print(f"[green]ok[/green]: {report.checked} events, chain intact, "
                  f"{report.checkpoints} signed checkpoints verified", highlight=False)
    else:
        out.print(f"[red]tampered[/red]: {len(report.problems)} problem(s) in "
                  f"{report.checked} events", highlight=False)
        for p in report.problems:
            out.print(f"  event {p['seq']}: [bold]{p['problem']}[/bold] - {p['detail']}",
                      highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def _db_jwks(services: Any) -> dict[str, Any] | None:
    try:
        return services.keys.jwks()
    except Exception:  # noqa: BLE001 - no key: checkpoints will be reported as unverifiable
        return None


@audit_app.command("search")
def audit_search(
        type: Annotated[str | None, typer.Option(help="Event type, or a prefix ending in *.")
                        ] = None,
        identity: Annotated[str | None, typer.Option(help="Actor or subject id.")] = None,
        outcome: Annotated[str | None, typer.Option(help="success or failure.")] = None,
        since: Annotated[str | None, typer.Option(help="RFC 3339 time, or 1h/2d ago.")
                         ] = None,
        until: Annotated[str | None, typer.Option(help="RFC 3339 time.")] = None,
        cursor: Annotated[str | None, typer.Option(help="Continue after this seq.")] = None,
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
        follow: Annotated[bool, typer.Option("--follow", "-f",
                                             help="Keep printing new events as they come.")
                          ] = False,
        interval: Annotated[float, typer.Option(help="Poll period with --follow (s).")] = 1.0,
        as_json: JsonOut = False) -> None:
    """Search the audit log (filters: time, identity, type, outcome; cursor pagination)."""
    import time as _time

    def ago(value: str | None) -> str | None:
        if value and value[-1:] in "dhm" and value[:-1].isdigit():
            units = {"d": "days", "h": "hours", "m": "minutes"}
            delta = timedelta(**{units[value[-1]]: int(value[:-1])})
            return (datetime.now(UTC) - delta).isoformat()
        return value

    params: dict[str, Any] = {k: v for k, v in {
        "type": type, "identity": identity, "outcome": outcome, "since": ago(since),
        "until": until, "limit": limit, "cursor": cursor}.items() if v is not None}
    api = Api(Settings())
    while True:
        page = run(lambda: api.call("GET", "/v1/audit/events", params=params))
        if follow:
            for item in page["items"]:
                print(json.dumps(item) if as_json else
                      f"{item['seq']:>8} {item['ts']} {item['type']:<32} {item['outcome']:<8} "
                      f"{item['actor'] or '-'} -> {item['subject'] or '-'} "
                      f"{item['resource'] or ''}", flush=True)
            params["cursor"] = str(page["last_seq"])
            if not page["next_cursor"]:
                _time.sleep(interval)
            continue
        emit(page, as_json, AUDIT_COLUMNS)
        return


@audit_app.command("retain")
def audit_retain(before: Annotated[str, typer.Argument(
                     help="Remove events older than this: RFC 3339 time or an age (90d).")],
                 as_json: JsonOut = False) -> None:
    """Remove old events up to a signed checkpoint; the chain still verifies (audited)."""
    if before[-1:] in ("d", "h") and before[:-1].isdigit():
        delta = timedelta(**{"days" if before[-1] == "d" else "hours": int(before[:-1])})
        before = (datetime.now(UTC) - delta).isoformat()
    emit(run(lambda: Api(Settings()).call("POST", "/v1/audit/retention",
                                          json={"before": before})), as_json)


@audit_app.command("list")
def audit_list(after: Annotated[int, typer.Option(help="Start after this sequence.")] = 0,
               limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
               type: Annotated[str | None, typer.Option(help="Event type.")] = None,
               subject: Annotated[str | None, typer.Option(help="Identity id.")] = None,
               outcome: Annotated[str | None, typer.Option()] = None,
               as_json: JsonOut = False) -> None:
    """List audit events (see also `audit search`)."""
    params = {k: v for k, v in {"after": after, "limit": limit, "type": type,
                                "subject": subject, "outcome": outcome}.items() if v is not None}
    emit(run(lambda: Api(Settings()).call("GET", "/v1/audit/events", params=params)), as_json,
         AUDIT_COLUMNS)


@audit_app.command("export")
def audit_export(
        output: Annotated[Path, typer.Option("--output", "-o",
                                             help="JSON Lines file ('-' for standard output).")],
        data_dir: DataDir = None,
        otlp: Annotated[str | None, typer.Option(
            help="Also send every event to this OTLP/HTTP endpoint (e.g. "
                 "http://127.0.0.1:4318).")] = None) -> None:
    """Export the whole log (signed checkpoint at the head first) from the database."""
    from tessera.audit import events as ev
    from tessera.audit.export import write_export
    from tessera.container import build

    services = build(settings_for(data_dir))
    try:
        with services.sessions() as session:
            services.audit.checkpoint(session)
            services.audit.record(session, ev.AUDIT_EXPORTED, actor="cli",
                                  resource="audit:events",
                                  data={"otlp": bool(otlp), "file": output.name})
            session.commit()
        from tessera.db import make_session_factory

        with make_session_factory(services.engine, readonly=True)() as session:
            if str(output) == "-":
                count = write_export(session, services.clock, services.keys.jwks(), sys.stdout)
            else:
                with output.open("w", encoding="utf-8") as fh:
                    count = write_export(session, services.clock, services.keys.jwks(), fh)
                err.print(f"wrote {count} lines to {output}", highlight=False)
            if otlp:
                from tessera.audit.otlp import export_otlp

                sent = export_otlp(services.audit.iter_rows(session), otlp,
                                   node_id=services.settings.node_id)
                err.print(f"sent {sent} events to {otlp}", highlight=False)
    finally:
        services.close()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending migrations."""
    from tessera.db import make_engine, migrate

    engine = make_engine(settings_for(data_dir).db_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    out.print("database schema up to date")


app.add_typer(access_app, name="access")
app.add_typer(secrets_app, name="secrets")
from tessera.cli.monitor_cmds import register as _register_monitor  # noqa: E402

_register_monitor(app)

if __name__ == "__main__":  # pragma: no cover
    app()

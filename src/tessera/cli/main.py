"""`tessera` command line. Thin: every command calls a service or the server's API."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tessera.cli.client import Api, CLIError, fetch_token
from tessera.cli.keys import keys_app
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
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Data directory (default $TESSERA_DATA_DIR or ./.tessera).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def settings_for(data_dir: Path | None = None, **overrides: Any) -> Settings:
    s = Settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        updates["data_dir"] = data_dir
    return s.model_copy(update=updates) if updates else s


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def run(fn: Any) -> Any:
    try:
        return fn()
    except CLIError as exc:
        fail(str(exc))


def emit(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    if columns is None:
        table = Table(show_header=False, box=None)
        for key, value in data.items():
            table.add_row(f"[bold]{key}[/bold]", json.dumps(value) if isinstance(
                value, (dict, list)) else str(value if value is not None else "-"))
        out.print(table)
        return
    items = data["items"]
    table = Table(*columns)
    for item in items:
        table.add_row(*[json.dumps(item.get(c)) if isinstance(item.get(c), (dict, list))
                        else str(item.get(c) if item.get(c) is not None else "-")
                        for c in columns])
    out.print(table)
    if data.get("next_cursor"):
        out.print(f"more: --cursor {data['next_cursor']}")


# -- init / serve / token --------------------------------------------------------------------

@app.command()
def init(data_dir: DataDir = None,
         trust_domain: Annotated[Optional[str], typer.Option(
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
    out.print(f"admin client id: {report.admin_id}", highlight=False)


@app.command()
def serve(data_dir: DataDir = None,
          host: Annotated[Optional[str], typer.Option(help="Address to bind.")] = None,
          port: Annotated[Optional[int], typer.Option(help="Port (default 8700).")] = None,
          workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info") -> None:
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
    services = build(settings)
    try:
        check_ready(services)
    except NotMigrated as exc:
        fail(str(exc))
    finally:
        services.close()
    out.print(f"Tessera listening on http://{settings.host}:{settings.port} "
              f"(issuer {settings.issuer_url})", highlight=False)
    out.print(f"Admin token:  TESSERA_DATA_DIR={settings.data_dir} tessera token",
              highlight=False)
    uvicorn.run("tessera.api.app:create_app", factory=True, host=settings.host,
                port=settings.port, workers=workers, log_level=log_level,
                server_header=False)


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
        return (datetime.now(timezone.utc) + delta).isoformat()
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
        owner: Annotated[Optional[str], typer.Option(help="Owner's identity id.")] = None,
        purpose: Annotated[str, typer.Option(help="What it is for.")] = "",
        expires: Annotated[Optional[str], typer.Option(
            help="Expiry: RFC 3339 time or a duration (30d, 12h).")] = None,
        attr: Annotated[Optional[list[str]], typer.Option(
            help="Attribute KEY=VALUE (VALUE may be JSON); repeatable.")] = None,
        scope: Annotated[Optional[list[str]], typer.Option(
            help="Allowed scope; repeatable.")] = None,
        audience: Annotated[Optional[list[str]], typer.Option(
            help="Allowed audience (resource URI); repeatable.")] = None,
        token_ttl: Annotated[Optional[int], typer.Option(
            help="Access token lifetime in seconds (30-3600).")] = None,
        dpop_required: Annotated[bool, typer.Option(
            "--dpop-required", help="Issue only DPoP-bound tokens.")] = False,
        may_act_for: Annotated[Optional[list[str]], typer.Option(
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
def identity_list(kind: Annotated[Optional[str], typer.Option()] = None,
                  status: Annotated[Optional[str], typer.Option()] = None,
                  owner: Annotated[Optional[str], typer.Option()] = None,
                  limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
                  cursor: Annotated[Optional[str], typer.Option()] = None,
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
        purpose: Annotated[Optional[str], typer.Option()] = None,
        expires: Annotated[Optional[str], typer.Option(help="RFC 3339 or 30d/12h.")] = None,
        attr: Annotated[Optional[list[str]], typer.Option(
            help="Replace attributes with these KEY=VALUE pairs.")] = None,
        scope: Annotated[Optional[list[str]], typer.Option(help="Replace allowed scopes.")
                         ] = None,
        audience: Annotated[Optional[list[str]], typer.Option(
            help="Replace allowed audiences.")] = None,
        token_ttl: Annotated[Optional[int], typer.Option(
            help="Access token lifetime in seconds (30-3600).")] = None,
        dpop_required: Annotated[Optional[bool], typer.Option(
            "--dpop-required/--no-dpop-required", help="Issue only DPoP-bound tokens.")] = None,
        may_act_for: Annotated[Optional[list[str]], typer.Option(
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
                   expires: Annotated[Optional[str], typer.Option(
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

@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Walk the hash chain in the database and report the first broken link."""
    from tessera.audit import AuditService
    from tessera.db import make_engine, make_session_factory

    settings = settings_for(data_dir)
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            report = AuditService.verify(session)
    finally:
        engine.dispose()
    result = {"ok": report.ok, "checked": report.checked, "head_seq": report.head_seq,
              "problems": report.problems}
    if as_json:
        print(json.dumps(result, indent=2))
    elif report.ok:
        out.print(f"[green]ok[/green]: {report.checked} events, chain intact")
    else:
        p = report.problems[0]
        out.print(f"[red]broken[/red] at event {p['seq']}: {p['problem']} ({p['detail']}); "
                  f"{report.checked} events verified before it", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("list")
def audit_list(after: Annotated[int, typer.Option(help="Start after this sequence.")] = 0,
               limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
               type: Annotated[Optional[str], typer.Option(help="Event type.")] = None,
               subject: Annotated[Optional[str], typer.Option(help="Identity id.")] = None,
               outcome: Annotated[Optional[str], typer.Option()] = None,
               as_json: JsonOut = False) -> None:
    """List audit events."""
    params = {k: v for k, v in {"after": after, "limit": limit, "type": type,
                                "subject": subject, "outcome": outcome}.items() if v is not None}
    emit(run(lambda: Api(Settings()).call("GET", "/v1/audit/events", params=params)), as_json,
         ["seq", "ts", "type", "outcome", "actor", "subject", "resource"])


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


if __name__ == "__main__":  # pragma: no cover
    app()

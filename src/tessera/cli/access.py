"""`tessera access …` and `tessera secrets …`: thin commands over the management API."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from tessera.cli.client import Api
from tessera.cli.common import JsonOut, emit, fail, out, run
from tessera.config import Settings

access_app = typer.Typer(help="Just-in-time access requests and action approvals.",
                         no_args_is_help=True)
secrets_app = typer.Typer(help="Dynamic database credentials under leases.",
                          no_args_is_help=True)
REQUEST_COLUMNS = ["id", "identity_id", "role", "status", "duration", "requested_by",
                   "decide_by", "grant_expires_at"]
LEASE_COLUMNS = ["id", "identity_id", "template", "username", "status", "expires_at",
                 "max_expires_at"]


def parse_duration(value: str) -> int:
    """Seconds from `3600`, `90m`, `2h` or `1d`."""
    match = re.fullmatch(r"(\d+)([smhd]?)", value.strip())
    if not match:
        fail(f"duration {value!r} must look like 3600, 90m, 2h or 1d")
        raise AssertionError  # unreachable: fail() exits
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def api() -> Api:
    return Api(Settings())


@access_app.command("request")
def access_request(
        role: str,
        duration: Annotated[str, typer.Option(help="How long: 3600, 90m, 2h, 1d.")],
        justification: Annotated[str, typer.Option("--justification", "-j",
                                                   help="Why it is needed.")],
        identity: Annotated[str | None, typer.Option(
            help="On behalf of this identity (its owner or an admin).")] = None,
        as_json: JsonOut = False) -> None:
    """Ask for a role for a while."""
    body: dict[str, Any] = {"role": role, "duration": parse_duration(duration),
                            "justification": justification}
    if identity:
        body["identity"] = identity
    emit(run(lambda: api().call("POST", "/v1/access-requests", json=body)), as_json)


@access_app.command("list")
def access_list(status: Annotated[str | None, typer.Option(
                    help="pending, approved, denied, withdrawn, expired, cancelled.")] = None,
                identity: Annotated[str | None, typer.Option()] = None,
                as_json: JsonOut = False) -> None:
    """List access requests you may see (yours, your identities', those you approve)."""
    params = {k: v for k, v in {"status": status, "identity": identity}.items() if v}
    emit(run(lambda: api().call("GET", "/v1/access-requests", params=params)), as_json,
         REQUEST_COLUMNS)


def _decide(verb: str, doc: str) -> None:
    def command(request_id: str,
                comment: Annotated[str, typer.Option(help="Recorded with the decision.")] = "",
                as_json: JsonOut = False) -> None:
        emit(run(lambda: api().call("POST", f"/v1/access-requests/{request_id}/{verb}",
                                    json={"comment": comment})), as_json)

    command.__doc__ = doc
    access_app.command(verb)(command)


_decide("approve", "Approve an access request (sensitive roles need two approvers).")
_decide("deny", "Deny an access request.")
_decide("withdraw", "Withdraw your own pending request.")


@access_app.command("define-role")
def access_define_role(
        name: str,
        max_duration: Annotated[str, typer.Option(help="Cap: 3600, 8h, 1d.")],
        approver_role: Annotated[str | None, typer.Option(
            help="Holders of this role approve.")] = None,
        owner_approves: Annotated[bool, typer.Option(
            help="The identity's owner may approve.")] = True,
        approvals: Annotated[int, typer.Option(min=1, max=10)] = 1,
        sensitive: Annotated[bool, typer.Option(help="Needs two approvers.")] = False,
        description: str = "", as_json: JsonOut = False) -> None:
    """Make a role requestable (admin)."""
    body = {"name": name, "description": description,
            "max_duration": parse_duration(max_duration), "approver_role": approver_role,
            "owner_approves": owner_approves, "approvals_required": approvals,
            "sensitive": sensitive}
    emit(run(lambda: api().call("PUT", f"/v1/access-roles/{name}", json=body)), as_json)


@access_app.command("approvals")
def access_approvals(status: Annotated[str | None, typer.Option()] = "pending",
                     as_json: JsonOut = False) -> None:
    """List action approvals (admin)."""
    params = {"status": status} if status else {}
    emit(run(lambda: api().call("GET", "/v1/approvals", params=params)), as_json,
         ["id", "status", "principal", "action", "resource", "decide_by"])


@access_app.command("show-approval")
def access_show_approval(approval_id: str, as_json: JsonOut = False) -> None:
    """Show one action approval with its human-readable summary."""
    data = run(lambda: api().call("GET", f"/v1/approvals/{approval_id}"))
    if not as_json:
        out.print(data["summary"], highlight=False)
    emit(data, as_json)


def _decide_action(verb: str, doc: str) -> None:
    def command(approval_id: str, comment: str = "", as_json: JsonOut = False) -> None:
        emit(run(lambda: api().call("POST", f"/v1/approvals/{approval_id}/{verb}",
                                    json={"comment": comment})), as_json)

    command.__doc__ = doc
    access_app.command(f"{verb}-action")(command)


_decide_action("approve", "Approve one high-impact action.")
_decide_action("deny", "Deny one high-impact action.")


# -- secrets ---------------------------------------------------------------------------------

@secrets_app.command("add-connection")
def secrets_add_connection(
        name: str, host: Annotated[str, typer.Option()],
        database: Annotated[str, typer.Option()], username: Annotated[str, typer.Option()],
        port: Annotated[int, typer.Option()] = 5432,
        password: Annotated[str, typer.Option(prompt=True, hide_input=True,
                                              help="Stored sealed; prompted if omitted.")] = "",
        sslmode: str = "prefer", as_json: JsonOut = False) -> None:
    """Configure a PostgreSQL admin connection (admin)."""
    body = {"name": name, "host": host, "port": port, "database": database,
            "username": username, "password": password, "sslmode": sslmode}
    emit(run(lambda: api().call("POST", "/v1/secrets/connections", json=body)), as_json)


@secrets_app.command("add-template")
def secrets_add_template(
        name: str, connection: Annotated[str, typer.Option()],
        sql_file: Annotated[typer.FileText, typer.Option(
            "--sql", help="File with the creation SQL ({{name}}, {{password}}, "
                          "{{expiration}}).")],
        allowed_role: Annotated[list[str] | None, typer.Option(
            help="Identities holding this role may obtain credentials; repeatable.")] = None,
        default_ttl: Annotated[str | None, typer.Option()] = None,
        max_ttl: Annotated[str | None, typer.Option()] = None,
        as_json: JsonOut = False) -> None:
    """Define a role template (admin)."""
    body: dict[str, Any] = {"name": name, "connection": connection,
                            "creation_sql": sql_file.read(),
                            "allowed_roles": allowed_role or []}
    if default_ttl:
        body["default_ttl"] = parse_duration(default_ttl)
    if max_ttl:
        body["max_ttl"] = parse_duration(max_ttl)
    emit(run(lambda: api().call("POST", "/v1/secrets/templates", json=body)), as_json)


@secrets_app.command("creds")
def secrets_creds(template: str,
                  ttl: Annotated[str | None, typer.Option(help="Lease: 3600, 30m, 2h.")
                                 ] = None,
                  as_json: JsonOut = False) -> None:
    """Obtain fresh credentials (the password is shown once)."""
    body = {"ttl": parse_duration(ttl)} if ttl else {}
    emit(run(lambda: api().call("POST", f"/v1/secrets/creds/{template}", json=body)), as_json)


@secrets_app.command("leases")
def secrets_leases(status: Annotated[str | None, typer.Option()] = None,
                   as_json: JsonOut = False) -> None:
    """List leases (yours; an admin sees all)."""
    params = {"status": status} if status else {}
    emit(run(lambda: api().call("GET", "/v1/secrets/leases", params=params)), as_json,
         LEASE_COLUMNS)


@secrets_app.command("renew")
def secrets_renew(lease_id: str,
                  increment: Annotated[str | None, typer.Option()] = None,
                  as_json: JsonOut = False) -> None:
    """Extend a lease, within its cap."""
    body = {"increment": parse_duration(increment)} if increment else {}
    emit(run(lambda: api().call("POST", f"/v1/secrets/leases/{lease_id}/renew", json=body)),
         as_json)


@secrets_app.command("revoke")
def secrets_revoke(lease_id: str, reason: str = "", as_json: JsonOut = False) -> None:
    """Revoke a lease now: sessions end and the role is dropped."""
    emit(run(lambda: api().call("POST", f"/v1/secrets/leases/{lease_id}/revoke",
                                json={"reason": reason})), as_json)

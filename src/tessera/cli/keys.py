"""`tessera keys`: list and rotate Tessera's signing keys through the management API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tessera.cli.client import Api, CLIError
from tessera.config import Settings

keys_app = typer.Typer(help="Tessera's token-signing keys.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)
COLUMNS = ["kid", "alg", "status", "published", "activated_at", "verify_until"]


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        return Api(Settings()).call(method, path, **kwargs)
    except CLIError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List signing keys: pending (published, not signing), active, retired."""
    data = _call("GET", "/v1/keys")
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    table = Table(*COLUMNS)
    for item in data["items"]:
        table.add_row(*[str(item.get(c) if item.get(c) is not None else "-") for c in COLUMNS])
    _out.print(table)


@keys_app.command("rotate")
def keys_rotate(now: Annotated[bool, typer.Option(
        "--now", help="Activate at once (emergency); by default the new key is published "
                      "first and starts signing after the pre-publication delay.")] = False,
        as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Publish a new signing key; it signs once every verifier can have seen it."""
    data = _call("POST", "/v1/keys/rotate", json={"now": now})
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    elif data.get("activated"):
        _out.print(f"key {data['activated']} is now signing; the previous key verifies until "
                   "its last token expires", highlight=False)
    else:
        _out.print(f"key {data['staged']} published; it starts signing at "
                   f"{data.get('activates_at')}", highlight=False)

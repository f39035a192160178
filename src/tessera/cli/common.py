"""What every CLI module shares: consoles, common options, error and output helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tessera.cli.client import CLIError
from tessera.config import Settings

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option(
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

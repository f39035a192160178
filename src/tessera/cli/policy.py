"""`tessera policy ...` and `tessera resource ...`: policy-as-code and the resource catalog."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tessera.cli.client import Api, CLIError
from tessera.config import Settings

policy_app = typer.Typer(help="Versioned Cedar policies: push, test, activate, roll back.",
                         no_args_is_help=True)
resource_app = typer.Typer(help="The resource catalog (datasets, tools, APIs, models).",
                           no_args_is_help=True)
out = Console()
err = Console(stderr=True)

SetOpt = Annotated[str, typer.Option("--set", help="Policy set: default (AuthZEN decisions) or "
                                                   "admin (management API).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        return Api(Settings()).call(method, path, **kwargs)
    except CLIError as exc:
        _fail(str(exc))


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        out.print_json(json.dumps(data, default=str))


def _files(directory: Path) -> dict[str, str]:
    from tessera.authz.testing import load_policies

    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    files = load_policies(directory)
    if not files:
        _fail(f"no .cedar files in {directory}")
    return files


@policy_app.command("push")
def push(directory: Annotated[Path, typer.Argument(help="Directory of .cedar files.")],
         policy_set: SetOpt = "default",
         message: Annotated[str, typer.Option("-m", "--message", help="Why.")] = "",
         schema: Annotated[Path | None, typer.Option(
             help="Cedar schema fragment to add to the generated schema.")] = None,
         no_activate: Annotated[bool, typer.Option("--no-activate",
                                                   help="Store but do not activate.")] = False,
         as_json: JsonOut = False) -> None:
    """Validate and push a directory of policies as a new version (and activate it)."""
    body: dict[str, Any] = {"files": _files(directory), "message": message,
                            "activate": not no_activate}
    if schema is not None:
        body["schema_fragment"] = schema.read_text()
    try:
        result = Api(Settings()).call("POST", f"/v1/policies/{policy_set}", json=body)
    except CLIError as exc:
        _fail(str(exc))
        return
    if as_json:
        _emit(result, True)
    else:
        out.print(f"pushed {policy_set} v{result['version']} ({len(result['policies'])} "
                  f"policies){' and activated' if result['active'] else ''}", highlight=False)


@policy_app.command("list")
def list_versions(policy_set: SetOpt = "default", as_json: JsonOut = False) -> None:
    """List versions with author, message and time."""
    data = _call("GET", f"/v1/policies/{policy_set}/versions")
    if as_json:
        _emit(data, True)
        return
    from rich.table import Table
    table = Table("version", "active", "created_at", "author", "message")
    for v in data["items"]:
        table.add_row(str(v["version"]), "*" if v["active"] else "", v["created_at"],
                      str(v["author"] or "-"), v["message"])
    out.print(table)


@policy_app.command("show")
def show(version: Annotated[int | None, typer.Argument(help="Default: active.")] = None,
         policy_set: SetOpt = "default", as_json: JsonOut = False) -> None:
    """Print a version's policy files."""
    path = f"/v1/policies/{policy_set}" + (f"/versions/{version}" if version else "")
    data = _call("GET", path)
    if as_json:
        _emit(data, True)
        return
    for name, text in sorted(data["files"].items()):
        out.print(f"[bold]// {name}[/bold]")
        print(text)


@policy_app.command("diff")
def diff(a: int, b: int, policy_set: SetOpt = "default") -> None:
    """Unified diff between two versions."""
    print(_call("GET", f"/v1/policies/{policy_set}/diff", params={"from": a, "to": b})["diff"],
          end="")


@policy_app.command("activate")
def activate(version: int, policy_set: SetOpt = "default") -> None:
    """Make a stored version the active one."""
    data = _call("POST", f"/v1/policies/{policy_set}/activate", json={"version": version})
    out.print(f"{policy_set}: v{data['active_version']} active", highlight=False)


@policy_app.command("rollback")
def rollback(policy_set: SetOpt = "default") -> None:
    """Activate the version before the active one."""
    data = _call("POST", f"/v1/policies/{policy_set}/rollback")
    out.print(f"{policy_set}: rolled back to v{data['active_version']}", highlight=False)


@policy_app.command("fmt")
def fmt(paths: Annotated[list[Path], typer.Argument(help=".cedar files or directories.")],
        check: Annotated[bool, typer.Option("--check", help="Only report files that would "
                                                             "change (exit 1).")] = False) -> None:
    """Format Cedar policy files in place."""
    from tessera.authz.errors import PolicyError
    from tessera.authz.policies import format_text

    targets = [f for p in paths for f in (sorted(p.rglob("*.cedar")) if p.is_dir() else [p])]
    changed, failed = [], False
    for f in targets:
        text = f.read_text()
        try:
            new = format_text(text, str(f))
        except PolicyError as exc:
            for prob in exc.problems:
                err.print(str(prob), highlight=False)
            failed = True
            continue
        if new != text:
            changed.append(f)
            if not check:
                f.write_text(new)
    for f in changed:
        out.print(f"{'would reformat' if check else 'formatted'} {f}", highlight=False)
    if failed or (check and changed):
        raise typer.Exit(1)


@policy_app.command("test")
def test(directory: Annotated[Path, typer.Argument(help="Policies and their test cases.")],
         verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """Run YAML/JSON policy test cases against the policies in DIR; exit 1 on any failure."""
    from tessera.authz.testing import format_failure, run

    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    report = run(directory)
    for prob in report.problems:
        err.print(str(prob), highlight=False)
    for r in report.results:
        if not r.passed:
            print(format_failure(r))
        elif verbose:
            print(f"ok   {r.file}: {r.name}")
    passed = sum(r.passed for r in report.results)
    print(f"{passed}/{len(report.results)} cases passed"
          + (f", {len(report.problems)} policy problems" if report.problems else ""))
    if not report.ok:
        raise typer.Exit(1)


def _attrs(pairs: list[str] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"attribute {pair!r} must be KEY=VALUE")
        try:
            attrs[key] = json.loads(value)
        except ValueError:
            attrs[key] = value
    return attrs


@resource_app.command("add")
def resource_add(
        type_: Annotated[str, typer.Argument(metavar="TYPE", help="Dataset, Tool, Api, Model.")],
        resource_id: Annotated[str, typer.Argument(metavar="ID")],
        classification: Annotated[str | None, typer.Option(
            help="public, internal, confidential or restricted.")] = None,
        data_class: Annotated[list[str] | None, typer.Option(
            help="Data class (PII, PHI, PCI...); repeatable.")] = None,
        owner: Annotated[str | None, typer.Option()] = None,
        impact: Annotated[str | None, typer.Option(
            help="Impact level: low, medium, high, critical.")] = None,
        attr: Annotated[list[str] | None, typer.Option(
            help="Other attribute KEY=VALUE (JSON values allowed); repeatable.")] = None,
        parent: Annotated[list[str] | None, typer.Option(
            help="Parent as Type:id; repeatable.")] = None,
        as_json: JsonOut = False) -> None:
    """Register (or replace) a resource in the catalog."""
    attrs = _attrs(attr)
    for key, value in (("classification", classification), ("owner", owner),
                       ("impact_level", impact)):
        if value is not None:
            attrs[key] = value
    if data_class:
        attrs["data_classes"] = data_class
    parents = []
    for p in parent or []:
        t, sep, i = p.partition(":")
        if not sep:
            _fail(f"parent {p!r} must be Type:id")
        parents.append({"type": t, "id": i})
    _emit(_call("POST", "/v1/resources", json={"type": type_, "id": resource_id,
                                                "attributes": attrs, "parents": parents}),
          as_json)


@resource_app.command("list")
def resource_list(type_: Annotated[str | None, typer.Option("--type")] = None,
                  as_json: JsonOut = False) -> None:
    """List catalog resources."""
    params = {"type": type_} if type_ else {}
    _emit(_call("GET", "/v1/resources", params=params), as_json)


@resource_app.command("show")
def resource_show(type_: Annotated[str, typer.Argument(metavar="TYPE")],
                  resource_id: Annotated[str, typer.Argument(metavar="ID")],
                  as_json: JsonOut = False) -> None:
    """Show one catalog resource."""
    _emit(_call("GET", f"/v1/resources/{type_}/{resource_id}"), as_json)


@resource_app.command("remove")
def resource_remove(type_: Annotated[str, typer.Argument(metavar="TYPE")],
                    resource_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove a resource from the catalog."""
    _call("DELETE", f"/v1/resources/{type_}/{resource_id}")
    out.print(f"removed {type_}::{resource_id}", highlight=False)


@resource_app.command("import")
def resource_import(file: Annotated[Path, typer.Argument(
        help="Cedar entities JSON (a list) to import as external entities; '-' for stdin.")]
                    ) -> None:
    """Import external entities (end users, documents...) in Cedar's entity format."""
    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    try:
        entities = json.loads(text)
    except ValueError:
        _fail("the file is not valid JSON")
        return
    data = _call("POST", "/v1/entities", json={"entities": entities})
    out.print(f"imported {data['imported']} entities", highlight=False)

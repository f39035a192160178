"""`tessera alerts|risk|responses|subscriptions`: the monitor and CAEP through the API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.cli.client import Api
from tessera.config import Settings

alerts_app = typer.Typer(help="Behavioural alerts.", no_args_is_help=True)
risk_app = typer.Typer(help="Risk scores.", no_args_is_help=True)
responses_app = typer.Typer(help="Automatic responses (and undoing them).",
                            no_args_is_help=True)
subs_app = typer.Typer(help="CAEP webhook subscriptions (pushed Security Event Tokens).",
                       no_args_is_help=True)
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _main() -> Any:
    from tessera.cli import common as main  # the shared output helpers

    return main


def _call(method: str, path: str, **kwargs: Any) -> Any:
    m = _main()
    return m.run(lambda: Api(Settings()).call(method, path, **kwargs))


@alerts_app.command("list")
def alerts_list(identity: Annotated[str | None, typer.Option()] = None,
                status: Annotated[str | None, typer.Option(help="open or resolved")] = None,
                detector: Annotated[str | None, typer.Option()] = None,
                cursor: Annotated[str | None, typer.Option()] = None,
                limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
                as_json: JsonOut = False) -> None:
    """List alerts, newest first."""
    params = {k: v for k, v in {"identity": identity, "status": status, "detector": detector,
                                "cursor": cursor, "limit": limit}.items() if v is not None}
    _main().emit(_call("GET", "/v1/alerts", params=params), as_json,
                 ["id", "ts", "identity", "detector", "score", "status", "summary"])


@alerts_app.command("resolve")
def alerts_resolve(alert_id: str, reason: Annotated[str, typer.Option()] = "",
                   as_json: JsonOut = False) -> None:
    """Mark an alert resolved (recorded in the audit log)."""
    _main().emit(_call("POST", f"/v1/alerts/{alert_id}/resolve", json={"reason": reason}),
                 as_json)


@risk_app.command("show")
def risk_show(identity: str, as_json: JsonOut = False) -> None:
    """An identity's current risk and active responses."""
    _main().emit(_call("GET", f"/v1/risk/{identity}"), as_json)


@risk_app.command("set")
def risk_set(identity: str, risk: Annotated[int, typer.Argument(min=0, max=100)],
             reason: Annotated[str, typer.Option()] = "", as_json: JsonOut = False) -> None:
    """Override an identity's risk (audited)."""
    _main().emit(_call("PUT", f"/v1/risk/{identity}", json={"risk": risk, "reason": reason}),
                 as_json)


@responses_app.command("list")
def responses_list(identity: Annotated[str | None, typer.Option()] = None,
                   status: Annotated[str | None, typer.Option(help="active or undone")
                                     ] = None,
                   as_json: JsonOut = False) -> None:
    """List automatic responses."""
    params = {k: v for k, v in {"identity": identity, "status": status}.items() if v}
    _main().emit(_call("GET", "/v1/responses", params=params), as_json,
                 ["id", "ts", "identity", "kind", "threshold", "risk", "status"])


@responses_app.command("undo")
def responses_undo(response_id: str, reason: Annotated[str, typer.Option()] = "",
                   as_json: JsonOut = False) -> None:
    """Undo a response (resumes a suspended identity, lifts an approval requirement)."""
    _main().emit(_call("POST", f"/v1/responses/{response_id}/undo",
                       json={"reason": reason}), as_json)


@subs_app.command("add")
def subs_add(url: str,
             event: Annotated[list[str] | None, typer.Option(help="CAEP event type URI; "
                                                                     "repeatable.")] = None,
             audience: Annotated[str | None, typer.Option()] = None,
             description: Annotated[str, typer.Option()] = "",
             as_json: JsonOut = False) -> None:
    """Register a webhook that receives SETs (RFC 8935 push)."""
    body: dict[str, Any] = {"url": url, "description": description}
    if event:
        body["events"] = event
    if audience:
        body["audience"] = audience
    _main().emit(_call("POST", "/v1/subscriptions", json=body), as_json)


@subs_app.command("list")
def subs_list(as_json: JsonOut = False) -> None:
    """List active subscriptions."""
    _main().emit(_call("GET", "/v1/subscriptions"), as_json,
                 ["id", "url", "audience", "status", "created_at"])


@subs_app.command("delete")
def subs_delete(sub_id: str, as_json: JsonOut = False) -> None:
    """Remove a subscription."""
    _main().emit(_call("DELETE", f"/v1/subscriptions/{sub_id}"), as_json)


@subs_app.command("deliveries")
def subs_deliveries(sub_id: str,
                    status: Annotated[str | None, typer.Option(
                        help="pending, delivered or failed")] = None,
                    as_json: JsonOut = False) -> None:
    """Show deliveries to one subscriber, undelivered ones included."""
    params = {"status": status} if status else {}
    _main().emit(_call("GET", f"/v1/subscriptions/{sub_id}/deliveries", params=params),
                 as_json, ["id", "event_type", "subject", "status", "attempts", "last_error"])


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(risk_app, name="risk")
    app.add_typer(responses_app, name="responses")
    app.add_typer(subs_app, name="subscriptions")

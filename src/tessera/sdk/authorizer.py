"""A policy enforcement point (PEP): ask Tessera for decisions, in-process or remotely.

`Authorizer.remote(...)` asks the AuthZEN API (OpenID AuthZEN Authorization API 1.0) on every
call; `Authorizer.in_process(...)` pulls a policy snapshot from the server
(`GET /v1/authz/snapshot`) and evaluates with cedarpy locally, refreshing it every `refresh`
seconds. Both answer with the same `Result`. Imports nothing from the server package.
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cedarpy
import httpx

__all__ = ["AuthorizationMiddleware", "Authorizer", "Denied", "Result", "apply_mask",
           "authorize"]

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_IDENTITY_ALIAS = "*identity*"
_IDENTITY_TYPES = {"Agent", "Model", "Pipeline", "Service", "User"}


@dataclass
class Result:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    obligations: list[dict[str, Any]] = field(default_factory=list)

    def mask_fields(self) -> set[str]:
        return {f for o in self.obligations if o.get("type") == "mask" for f in o["fields"]}


class Denied(PermissionError):
    """Raised by @authorize when the decision is a deny."""

    def __init__(self, result: Result) -> None:
        super().__init__("; ".join(result.reasons) or "denied by policy")
        self.result = result


def apply_mask(records: Iterable[Any], obligations: Iterable[Mapping[str, Any]] | Result,
               mask: str = "***", columns: list[str] | None = None) -> list[Any]:
    """Apply @mask obligations to dicts, or to row tuples given the cursor's column names."""
    obs = obligations.obligations if isinstance(obligations, Result) else obligations
    fields = {f for o in obs if o.get("type") == "mask" for f in o.get("fields", ())}
    out: list[Any] = []
    for rec in records:
        if isinstance(rec, Mapping):
            out.append({k: (mask if k in fields and v is not None else v)
                        for k, v in rec.items()})
        elif columns is not None:
            out.append(tuple(mask if c in fields and v is not None else v
                             for c, v in zip(columns, rec)))
        else:
            raise TypeError("rows that are not mappings need `columns` (cursor.description)")
    return out


class Authorizer:
    """One interface over remote (AuthZEN) and in-process (snapshot + cedarpy) decisions."""

    def __init__(self, base_url: str, token: str | Callable[[], str], *, mode: str = "remote",
                 refresh: float = 30.0, http: httpx.Client | None = None) -> None:
        if mode not in ("remote", "in_process"):
            raise ValueError("mode is 'remote' or 'in_process'")
        self.base_url = base_url.rstrip("/")
        self.mode = mode
        self._token = token
        self._http = http or httpx.Client(base_url=self.base_url, timeout=10)
        self._refresh = refresh
        self._snap: dict[str, Any] | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    @classmethod
    def remote(cls, base_url: str, token: str | Callable[[], str], **kw: Any) -> Authorizer:
        return cls(base_url, token, mode="remote", **kw)

    @classmethod
    def in_process(cls, base_url: str, token: str | Callable[[], str],
                   **kw: Any) -> Authorizer:
        return cls(base_url, token, mode="in_process", **kw)

    def _headers(self) -> dict[str, str]:
        tok = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {tok}"}

    def evaluate(self, subject: Mapping[str, Any], action: str, resource: Mapping[str, Any],
                 context: Mapping[str, Any] | None = None) -> Result:
        if self.mode == "remote":
            return self._remote(subject, action, resource, context)
        return self._local(subject, action, resource, context)

    def _remote(self, subject: Mapping[str, Any], action: str, resource: Mapping[str, Any],
                context: Mapping[str, Any] | None) -> Result:
        body = {"subject": dict(subject), "action": {"name": action},
                "resource": dict(resource), "context": dict(context or {})}
        resp = self._http.post(f"{self.base_url}/access/v1/evaluation", json=body,
                               headers=self._headers())
        if resp.status_code != 200:
            return Result(False, [f"PDP answered {resp.status_code}"])
        data = resp.json()
        ctx = data.get("context") or {}
        return Result(bool(data.get("decision")), list(ctx.get("reasons", [])),
                      list(ctx.get("policies", [])), list(ctx.get("obligations", [])))

    # -- in-process ------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._snap is not None and now - self._fetched < self._refresh:
            return self._snap
        with self._lock:
            resp = self._http.get(f"{self.base_url}/v1/authz/snapshot",
                                  headers=self._headers())
            resp.raise_for_status()
            data = resp.json()
            policies = data["policies"]
            text = "\n".join(p["text"] for p in policies)
            # Cedar numbers policies of one text policy0, policy1, ... in order.
            data["ids"] = {f"policy{i}": p for i, p in enumerate(policies)}
            data["policy_set"] = cedarpy.PolicySet.from_str(text)
            data["entity_handle"] = cedarpy.Entities.from_json_str(json.dumps(
                data["entities"]))
            data["known"] = {(e["uid"]["type"], e["uid"]["id"]) for e in data["entities"]}
            self._snap, self._fetched = data, now
        return data

    def _local(self, subject: Mapping[str, Any], action: str, resource: Mapping[str, Any],
               context: Mapping[str, Any] | None) -> Result:
        snap = self._snapshot()
        aliases = snap["aliases"]
        sid = str(subject["id"])
        st = aliases.get(subject["type"], subject["type"])
        if st == _IDENTITY_ALIAS:
            st = snap["status"].get(sid, {}).get("type", "User")
        rt = aliases.get(resource["type"], resource["type"])
        status = snap["status"].get(sid)
        now = datetime.now(UTC)
        if status is not None and st in _IDENTITY_TYPES:
            if status["status"] != "active":
                return Result(False, [f"subject is {status['status']}"])
            if status["expires_at"] is not None and status["expires_at"] <= now.timestamp():
                return Result(False, ["subject has expired"])
        elif (st, sid) not in snap["known"]:
            return Result(False, ["unknown subject"])
        ents = snap["entity_handle"]
        rid = str(resource["id"])
        if (rt, rid) not in snap["known"]:
            ents = ents.with_added_json_str(json.dumps([{
                "uid": {"type": rt, "id": rid},
                "attrs": dict(resource.get("properties") or {}), "parents": []}]))
        ctx = dict(context or {})
        ctx.update(hour=now.hour, weekday=_WEEKDAYS[now.weekday()],
                   timestamp=int(now.timestamp()), source_ip="", risk=0, risk_score=0,
                   principal_status=status["status"] if status else "active")
        req = {"principal": {"type": st, "id": sid}, "action": {"type": "Action", "id": action},
               "resource": {"type": rt, "id": rid}, "context": ctx}
        res = cedarpy.is_authorized(req, snap["policy_set"], ents)
        determining = [snap["ids"][i] for i in res.diagnostics.reasons if i in snap["ids"]]
        obligations: list[dict[str, Any]] = []
        reasons: list[str] = []
        for p in determining:
            ann = p["annotations"]
            if "mask" in ann:
                obligations.append({"type": "mask", "fields": [
                    f.strip() for f in ann["mask"].split(",") if f.strip()], "policy": p["id"]})
            if "approval" in ann and p["effect"] == "forbid":
                obligations.append({"type": "approval", "group": ann["approval"],
                                    "policy": p["id"]})
            if "reason" in ann:
                reasons.append(ann["reason"])
        if not reasons:
            reasons = ["permitted by policy" if res.allowed else
                       "forbidden by policy" if determining else
                       "no policy permits this request"]
        return Result(res.allowed, reasons, [p["id"] for p in determining], obligations)


def authorize(authorizer: Authorizer, *, action: str,
              resource: Mapping[str, Any] | Callable[..., Mapping[str, Any]],
              subject: Mapping[str, Any] | Callable[..., Mapping[str, Any]]) -> Callable[..., Any]:
    """Decorate a tool function: evaluate before each call, raise Denied on a deny.

    `resource`/`subject` may be callables given the tool's arguments. If the function accepts
    a `decision` keyword, the Result (with its obligations) is passed in.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        wants = "decision" in inspect.signature(fn).parameters

        def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Result:
            subj = subject(*args, **kwargs) if callable(subject) else subject
            res = resource(*args, **kwargs) if callable(resource) else resource
            result = authorizer.evaluate(subj, action, res)
            if not result.allowed:
                raise Denied(result)
            if wants:
                kwargs["decision"] = result
            return result

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                check(args, kwargs)
                return await fn(*args, **kwargs)
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return fn(*args, **kwargs)
        return wrapper

    return decorate


Scope = dict[str, Any]


class AuthorizationMiddleware:
    """ASGI PEP: `resolve(scope)` maps a request to (subject, action, resource) or None (skip);
    a deny answers 403 before the app runs; an allow puts the Result in scope["state"]."""

    def __init__(self, app: Callable[..., Awaitable[None]], authorizer: Authorizer,
                 resolve: Callable[[Scope], tuple[dict[str, Any], str, dict[str, Any]] | None]
                 ) -> None:
        self.app = app
        self.authorizer = authorizer
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = self.resolve(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        result = self.authorizer.evaluate(*target)
        if not result.allowed:
            body = json.dumps({"error": "forbidden", "reasons": result.reasons}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["authz"] = result
        await self.app(scope, receive, send)

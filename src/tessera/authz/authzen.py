"""OpenID AuthZEN Authorization API 1.0 — https://openid.net/specs/authorization-api-1_0.html

Request parsing and response shaping for the evaluation, evaluations and search APIs. Pure:
the HTTP binding lives in `tessera.api.routers.authzen`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tessera.authz.engine import ACTION_TYPE, Decision, EvalRequest, Snapshot
from tessera.authz.errors import AuthZENError, UnknownEntityType

SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
MAX_EVALUATIONS = 1000
MAX_SEARCH_CANDIDATES = 10_000
DEFAULT_PAGE = 50
MAX_PAGE = 1000
TUPLE_KEYS = ("subject", "action", "resource", "context")


def parse_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a request, or AuthZENError (400) — §11 HTTPS binding."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise AuthZENError("the request must be application/json", code="invalid_content_type")
    if not raw.strip():
        raise AuthZENError("the request body is empty")
    try:
        body = orjson.loads(raw)  # strict: no NaN/Infinity, integers within 64 bits
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthZENError("the request body is not valid JSON", code="malformed_json") from exc
    if not isinstance(body, dict):
        raise AuthZENError("the request body must be a JSON object")
    return body


def _props(obj: dict[str, Any], what: str) -> dict[str, Any] | None:
    props = obj.get("properties")
    if props is None:
        return None
    if not isinstance(props, dict):
        raise AuthZENError(f"{what}.properties must be an object")
    return props


def entity(obj: Any, what: str, *, need_id: bool = True) -> tuple[str, str | None,
                                                                    dict[str, Any] | None]:
    """§5.1/§5.2: an object with REQUIRED string `type` and `id`, OPTIONAL `properties`."""
    if not isinstance(obj, dict):
        raise AuthZENError(f"{what} must be an object with type and id")
    type_name, eid = obj.get("type"), obj.get("id")
    if not isinstance(type_name, str) or not 0 < len(type_name) <= 128:
        raise AuthZENError(f"{what}.type is required and must be a string")
    if need_id and (not isinstance(eid, str) or not 0 < len(eid) <= 256):
        raise AuthZENError(f"{what}.id is required and must be a string")
    return type_name, eid if isinstance(eid, str) else None, _props(obj, what)


def action(obj: Any) -> tuple[str, dict[str, Any] | None]:
    """§5.3: an object with a REQUIRED string `name`, OPTIONAL `properties`."""
    if not isinstance(obj, dict):
        raise AuthZENError("action must be an object with a name")
    name = obj.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise AuthZENError("action.name is required and must be a string")
    return name, _props(obj, "action")


def context(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise AuthZENError("context must be an object")
    return obj


def resolve(snap: Snapshot, type_name: str, eid: str | None) -> str:
    cedar_type = snap.resolve_type(type_name, eid)
    if cedar_type is None:
        raise UnknownEntityType(type_name)
    return cedar_type


def to_request(snap: Snapshot, body: dict[str, Any], source: str | None) -> EvalRequest:
    """§6.1: subject, action and resource are REQUIRED; context is OPTIONAL."""
    for key in ("subject", "action", "resource"):
        if key not in body:
            raise AuthZENError(f"{key} is required")
    stype, sid, sprops = entity(body["subject"], "subject")
    name, aprops = action(body["action"])
    rtype, rid, rprops = entity(body["resource"], "resource")
    ctx = context(body.get("context"))
    sid, rid = sid or "", rid or ""  # need_id=True: both are non-empty strings here
    return EvalRequest(principal=(resolve(snap, stype, sid), sid), action=(ACTION_TYPE, name),
                       resource=(resolve(snap, rtype, rid), rid), context=ctx,
                       principal_properties=sprops, resource_properties=rprops,
                       action_properties=aprops, source=source)


def response(decision: Decision) -> dict[str, Any]:
    """§6.2: a REQUIRED boolean `decision` and a `context` with reasons and obligations."""
    ctx: dict[str, Any] = {"reason_admin": {"en": "; ".join(decision.reasons)},
                           "reasons": decision.reasons, "policies": decision.policies,
                           "obligations": decision.obligations,
                           "policy_version": decision.policy_version}
    if decision.errors:
        ctx["errors"] = decision.errors
    ctx.update(decision.extra)
    return {"decision": decision.allowed, "context": ctx}


def error_item(exc: AuthZENError) -> dict[str, Any]:
    """§7.3: a failed item is `decision: false` with the error in its context."""
    return {"decision": False, "context": {"error": {"status": exc.status,
                                                    "message": exc.message}}}


@dataclass
class Evaluated:
    request: EvalRequest | None
    decision: Decision | None
    body: dict[str, Any]


def evaluations(snap: Snapshot, body: dict[str, Any], source: str | None,
                now: datetime, decide: Callable[[EvalRequest], Decision] | None = None,
                ) -> tuple[dict[str, Any], list[Evaluated]]:
    """§7: boxcarred evaluations with request-level defaults and evaluation semantics.

    `decide` evaluates one request (default: the snapshot; the service adds approvals)."""
    if decide is None:
        def decide(r: EvalRequest) -> Decision:
            return snap.evaluate(r, now)
    items = body.get("evaluations")
    if items is None or items == []:
        # §7.1: without an evaluations array the request is a single evaluation.
        req = to_request(snap, body, source)
        decision = decide(req)
        out = response(decision)
        return out, [Evaluated(req, decision, out)]
    if not isinstance(items, list):
        raise AuthZENError("evaluations must be an array")
    if len(items) > MAX_EVALUATIONS:
        raise AuthZENError(f"at most {MAX_EVALUATIONS} evaluations per request",
                           code="too_many_evaluations")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise AuthZENError("options must be an object")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in SEMANTICS:
        raise AuthZENError(f"options.evaluations_semantic must be one of {', '.join(SEMANTICS)}")
    defaults = {k: body[k] for k in TUPLE_KEYS if k in body}
    results: list[Evaluated] = []
    for item in items:
        if not isinstance(item, dict):
            results.append(Evaluated(None, None, error_item(
                AuthZENError("each evaluation must be an object"))))
        else:
            # §7.1.1: an item's own key replaces the default whole.
            merged = {**defaults, **{k: item[k] for k in TUPLE_KEYS if k in item}}
            try:
                req = to_request(snap, merged, source)
            except AuthZENError as exc:
                results.append(Evaluated(None, None, error_item(exc)))
            else:
                decision = decide(req)
                results.append(Evaluated(req, decision, response(decision)))
        allowed = results[-1].body["decision"]
        if (semantic == "deny_on_first_deny" and not allowed) or \
                (semantic == "permit_on_first_permit" and allowed):
            break
    return {"evaluations": [r.body for r in results]}, results


def _page(body: dict[str, Any]) -> tuple[int, int]:
    page = body.get("page") or {}
    if not isinstance(page, dict):
        raise AuthZENError("page must be an object")
    limit = page.get("limit", DEFAULT_PAGE)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise AuthZENError("page.limit must be a non-negative integer")
    token = page.get("token")
    offset = 0
    if token not in (None, ""):
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(str(token).encode()))["o"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthZENError("page.token is not valid", code="invalid_page_token") from exc
    return max(offset, 0), min(limit or DEFAULT_PAGE, MAX_PAGE)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def search(kind: str, snap: Snapshot, body: dict[str, Any], source: str | None,
           now: datetime) -> dict[str, Any]:
    """§8-§10: enumerate candidates of the asked type, evaluate each, return the permitted."""
    required = {"subject": ("action", "resource"), "resource": ("subject", "action"),
                "action": ("subject", "resource")}[kind]
    for key in (kind, *required) if kind != "action" else required:
        if key not in body:
            raise AuthZENError(f"{key} is required")
    offset, limit = _page(body)
    ctx = context(body.get("context"))
    make: Callable[[str], EvalRequest]
    candidates: list[str]  # action names, or the ids of the candidate entities
    if kind == "action":
        stype, sid, sprops = entity(body["subject"], "subject")
        rtype, rid, rprops = entity(body["resource"], "resource")
        st, rt = snap.resolve_type(stype, sid), snap.resolve_type(rtype, rid)
        if st is None or rt is None:
            return {"results": [], "page": {"next_token": "", "count": 0, "total": 0}}
        candidates = list(snap.action_names)

        def make(name: str) -> EvalRequest:
            return EvalRequest((st, sid or ""), (ACTION_TYPE, name), (rt, rid or ""), dict(ctx),
                               sprops, rprops, None, source)
        def render(key: Any) -> dict[str, Any]:
            return {"name": key}
    else:
        other = "resource" if kind == "subject" else "subject"
        ktype, _ignored, kprops = entity(body[kind], kind, need_id=False)
        otype, oid, oprops = entity(body[other], other)
        aname, aprops = action(body["action"])
        kt, ot = snap.resolve_type(ktype, None), snap.resolve_type(otype, oid)
        if kt is None or ot is None:
            return {"results": [], "page": {"next_token": "", "count": 0, "total": 0}}
        candidates = [uid[1] for uid in snap.candidates(kt)]

        def make(cid: str) -> EvalRequest:
            if kind == "subject":
                return EvalRequest((kt, cid), (ACTION_TYPE, aname), (ot, oid or ""), dict(ctx),
                                   kprops, oprops, aprops, source)
            return EvalRequest((ot, oid or ""), (ACTION_TYPE, aname), (kt, cid), dict(ctx),
                               oprops, kprops, aprops, source)
        def render(key: Any) -> dict[str, Any]:
            return {"type": ktype, "id": key}
    truncated = len(candidates) > MAX_SEARCH_CANDIDATES
    permitted: list[Any] = []
    for cand in candidates[:MAX_SEARCH_CANDIDATES]:
        if snap.evaluate(make(cand), now).allowed:
            permitted.append(cand)
    page_items = permitted[offset:offset + limit]
    nxt = offset + limit if offset + limit < len(permitted) else None
    page: dict[str, Any] = {"next_token": _token(nxt) if nxt is not None else "",
                            "count": len(page_items), "total": len(permitted)}
    if truncated:
        page["properties"] = {"truncated": True}
    return {"results": [render(x) for x in page_items], "page": page}

"""The decision engine: a prepared, immutable snapshot of policies and entities, asked many times.

Pure: no web framework, no SQLAlchemy. The service builds a `SnapshotSource` from the database and
swaps in a new `Snapshot` when the database's version counter moves.

Per request Cedar sees only (1) the policies whose scope can match the request's principal type,
action and resource type (the index), and (2) a small slice of the entity graph: the principal,
the resource, the action and their ancestors. Both are prepared once per distinct key and
cached, so a decision costs one Cedar evaluation however many identities are registered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cedarpy
from cedarpy import _internal as _cedar_native  # the extension the public wrapper calls

from tessera.authz.policies import ParsedPolicies, Policy, build_policy_set
from tessera.authz.ports import NoRisk, RiskProvider

TYPE_BY_KIND = {"agent": "Agent", "model": "Model", "pipeline": "Pipeline",
                "service": "Service", "human": "User"}
KIND_BY_TYPE = {v: k for k, v in TYPE_BY_KIND.items()}
ROLE_TYPE = "Role"
ACTION_TYPE = "Action"
RESERVED_ATTRS = ("kind", "name", "status", "owner", "purpose", "spiffe_id")
# `risk` is the name policies use ("context.risk"); `risk_score` is kept as an alias.
ENRICHED_CONTEXT = ("hour", "weekday", "timestamp", "source_ip", "risk", "risk_score",
                    "principal_status")
# Context keys no caller may set: a human's approval is proven only by an approval reference
# (`tessera.authz.approvals`), never by the caller saying so. A policy that reads
# `context.approved` therefore never sees it (`context has approved` is false).
CALLER_FORBIDDEN_CONTEXT = ("approved",)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
IDENTITY_ALIAS = "*identity*"  # alias target meaning "look the id up in the registry"
DEFAULT_ALIASES: dict[str, str] = {
    "identity": IDENTITY_ALIAS, "user": "User", "human": "User", "agent": "Agent",
    "model": "Model", "pipeline": "Pipeline", "service": "Service", "role": ROLE_TYPE,
    "dataset": "Dataset", "tool": "Tool", "api": "Api",
}
CACHE_LIMIT = 20_000
MAX_INT = 2**63 - 1
Uid = tuple[str, str]


def cedar_value(value: Any, depth: int = 0) -> Any:
    """JSON as Cedar accepts it: integers only (i64), no nulls; entity/extension escapes kept."""
    if depth > 32:
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_INT - 1 <= value <= MAX_INT else str(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < MAX_INT else str(value)
    if isinstance(value, list):
        return [v for v in (cedar_value(x, depth + 1) for x in value) if v is not None]
    if isinstance(value, dict):
        if len(value) == 1 and ("__entity" in value or "__extn" in value):
            return value
        return {str(k): v for k, v in ((k, cedar_value(x, depth + 1)) for k, x in value.items())
                if v is not None}
    return None


def cedar_record(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    out = cedar_value(dict(attrs or {}))
    return out if isinstance(out, dict) else {}


@dataclass(frozen=True)
class IdentityRecord:
    """What the engine knows of a registered identity (compact: one per identity)."""

    id: str
    kind: str
    name: str
    status: str
    owner: str | None
    purpose: str
    attributes: Mapping[str, Any]
    expires_at: float | None
    roles: tuple[str, ...]
    spiffe_id: str

    @property
    def uid(self) -> Uid:
        return (TYPE_BY_KIND.get(self.kind, "Identity"), self.id)

    def entity(self) -> dict[str, Any]:
        attrs = cedar_record(self.attributes)
        for key in RESERVED_ATTRS:
            attrs.pop(key, None)
        attrs.update(kind=self.kind, name=self.name, status=self.status, purpose=self.purpose,
                     spiffe_id=self.spiffe_id)
        if self.owner:
            attrs["owner"] = {"__entity": {"type": "User", "id": self.owner}}
        return {"uid": {"type": self.uid[0], "id": self.id}, "attrs": attrs,
                "parents": [{"type": ROLE_TYPE, "id": r} for r in self.roles]}


@dataclass
class SnapshotSource:
    """Everything a snapshot is built from; the service fills it from the database."""

    version: int
    policy_version: int | None
    policies: ParsedPolicies
    identities: dict[str, IdentityRecord] = field(default_factory=dict)
    entities: dict[Uid, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    extra_types: set[str] = field(default_factory=set)
    valid_until: float | None = None  # a grant or identity expires then: rebuild
    built_at: float = 0.0


@dataclass
class EvalRequest:
    principal: Uid
    action: Uid
    resource: Uid
    context: dict[str, Any] = field(default_factory=dict)
    principal_properties: dict[str, Any] | None = None
    resource_properties: dict[str, Any] | None = None
    action_properties: dict[str, Any] | None = None
    source: str | None = None


@dataclass
class Decision:
    """The answer: allowed or not, why, which policies decided and what the caller must do."""

    allowed: bool
    reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    obligations: list[dict[str, Any]] = field(default_factory=list)
    policy_version: int | None = None
    latency_us: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # more response context (approvals)

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "reasons": self.reasons, "errors": self.errors,
                "policies": self.policies, "obligations": self.obligations,
                "policy_version": self.policy_version,
                "latency_us": round(self.latency_us, 1)}


def obligations_of(policies: Iterable[Policy]) -> tuple[list[dict[str, Any]], list[str]]:
    """@mask, @approval and @reason annotations of the determining policies."""
    obligations: list[dict[str, Any]] = []
    reasons: list[str] = []
    for p in policies:
        ann = p.annotations
        if "mask" in ann:
            fields = [f.strip() for f in ann["mask"].split(",") if f.strip()]
            obligations.append({"type": "mask", "fields": fields, "policy": p.id})
        if "approval" in ann and p.effect == "forbid":
            obligations.append({"type": "approval", "group": ann["approval"], "policy": p.id})
        if "reason" in ann:
            reasons.append(ann["reason"])
    return obligations, reasons


class Snapshot:
    """A prepared, immutable view: evaluate() is thread-safe and never raises."""

    def __init__(self, source: SnapshotSource, risk: RiskProvider | None = None) -> None:
        self.source = source
        self.version = source.version
        self.policy_version = source.policy_version
        self._risk = risk or NoRisk()
        self._policies = source.policies.policies
        self._by_id = {p.id: p for p in self._policies}
        self._identities = source.identities
        self._names = {r.name: r.id for r in source.identities.values()}
        self._entities = source.entities
        self._ps_cache: dict[tuple[str, Uid, str, frozenset[str]],
                             tuple[Any, tuple[str, ...]]] = {}
        self._ent_cache: dict[tuple[Uid, Uid, Uid], Any] = {}
        self._lock = threading.Lock()
        self.known_types = (set(TYPE_BY_KIND.values()) | {ROLE_TYPE, ACTION_TYPE}
                            | {t for t, _ in source.entities}
                            | source.policies.entity_types() | source.extra_types)
        self.action_names = sorted({a for t, a in source.policies.action_names()
                                    if t == ACTION_TYPE}
                                   | {i for t, i in source.entities if t == ACTION_TYPE})

    # -- lookups ---------------------------------------------------------------------------

    def resolve_type(self, name: str, entity_id: str | None = None) -> str | None:
        """An AuthZEN `type` to a Cedar entity type, through the alias table; None if unknown."""
        target = self.source.aliases.get(name)
        if target == IDENTITY_ALIAS:
            rec = self.identity(entity_id) if entity_id is not None else None
            return rec.uid[0] if rec else "User"
        if target:
            return target
        return name if name in self.known_types else None

    def identity(self, ident: str) -> IdentityRecord | None:
        rec = self._identities.get(ident)
        if rec is None and ident in self._names:
            rec = self._identities.get(self._names[ident])
        return rec

    def find(self, uid: Uid) -> dict[str, Any] | None:
        """The Cedar JSON of an entity the snapshot knows, or None."""
        if uid[0] in KIND_BY_TYPE:
            rec = self.identity(uid[1])
            if rec is not None and rec.uid[0] == uid[0]:
                return rec.entity()
        return self._entities.get(uid)

    def candidates(self, type_name: str) -> list[Uid]:
        """Every entity of a type (for search), in a stable order."""
        found = {uid for uid in self._entities if uid[0] == type_name}
        if type_name in KIND_BY_TYPE:
            kind = KIND_BY_TYPE[type_name]
            found |= {(type_name, r.id) for r in self._identities.values() if r.kind == kind}
        return sorted(found)

    # -- the index -------------------------------------------------------------------------

    def _action_ancestors(self, action: Uid) -> set[Uid]:
        out: set[Uid] = set()
        stack = [action]
        while stack:
            cur = stack.pop()
            ent = self._entities.get(cur)
            for p in (ent or {}).get("parents", ()):
                uid = (p["type"], p["id"])
                if uid not in out:
                    out.add(uid)
                    stack.append(uid)
        return out

    def _matches(self, p: Policy, ptype: str, action: Uid, ancestors: set[Uid],
                 rtype: str) -> bool:
        if p.principal_types is not None and ptype not in p.principal_types:
            return False
        if p.resource_types is not None and rtype not in p.resource_types:
            return False
        if p.actions is not None:
            if action in p.actions:
                return True
            return p.action_in and bool(ancestors & p.actions)
        return True

    def policy_set(self, ptype: str, action: Uid, rtype: str,
                   waive: frozenset[str] = frozenset()) -> tuple[Any, tuple[str, ...]]:
        """The prepared PolicySet of the policies whose scope can match, minus the `waive`d
        ones (forbids an approval lifts); (None, ()) if none."""
        key = (ptype, action, rtype, waive)
        hit = self._ps_cache.get(key)
        if hit is not None:
            return hit
        ancestors = self._action_ancestors(action)
        chosen = [p for p in self._policies if p.id not in waive and
                  self._matches(p, ptype, action, ancestors, rtype)]
        value = (build_policy_set(chosen) if chosen else None, tuple(p.id for p in chosen))
        if len(self._ps_cache) >= CACHE_LIMIT:
            self._ps_cache.clear()
        self._ps_cache[key] = value
        return value

    def names_action(self, action: Uid) -> bool:
        """Whether some policy names `action` (or a group it is in) in its scope."""
        ancestors = self._action_ancestors(action)
        return any(p.actions is not None and (action in p.actions or
                                              (p.action_in and bool(ancestors & p.actions)))
                   for p in self._policies)

    def policy(self, policy_id: str) -> Policy | None:
        return self._by_id.get(policy_id)

    # -- entities --------------------------------------------------------------------------

    def _entity_json(self, uid: Uid, overlay: dict[str, Any] | None) -> dict[str, Any]:
        ent = self.find(uid)
        if ent is None:
            return {"uid": {"type": uid[0], "id": uid[1]}, "attrs": cedar_record(overlay),
                    "parents": []}
        if overlay:
            # Request properties add attributes; what the registry holds wins.
            ent = dict(ent)
            ent["attrs"] = {**cedar_record(overlay), **ent.get("attrs", {})}
        return ent

    def slice_json(self, req: EvalRequest) -> str:
        """The principal, resource and action with all their ancestors, as Cedar JSON."""
        out: dict[Uid, dict[str, Any]] = {}
        roots = [(req.principal, req.principal_properties), (req.resource,
                                                             req.resource_properties),
                 (req.action, None)]
        stack: list[Uid] = []
        for uid, overlay in roots:
            if uid in out:
                continue
            if uid[0] == ACTION_TYPE and uid not in self._entities:
                out[uid] = {"uid": {"type": uid[0], "id": uid[1]}, "attrs": {}, "parents": []}
                continue
            ent = self._entity_json(uid, overlay)
            out[uid] = ent
            stack.extend((p["type"], p["id"]) for p in ent.get("parents", ()))
        while stack:
            uid = stack.pop()
            if uid in out:
                continue
            known = self.find(uid)
            ent = known if known is not None else {
                "uid": {"type": uid[0], "id": uid[1]}, "attrs": {}, "parents": []}
            out[uid] = ent
            stack.extend((p["type"], p["id"]) for p in ent.get("parents", ()))
        return json.dumps(list(out.values()))

    def entities_for(self, req: EvalRequest) -> Any:
        if req.principal_properties or req.resource_properties:
            return cedarpy.Entities.from_json_str(self.slice_json(req))
        key = (req.principal, req.resource, req.action)
        ents = self._ent_cache.get(key)
        if ents is None:
            ents = cedarpy.Entities.from_json_str(self.slice_json(req))
            if len(self._ent_cache) >= CACHE_LIMIT:
                self._ent_cache.clear()
            self._ent_cache[key] = ents
        return ents

    # -- evaluation ------------------------------------------------------------------------

    def context_for(self, req: EvalRequest, now: datetime,
                    status: str, risk: int) -> dict[str, Any]:
        ctx = cedar_record(req.context) if req.context else {}
        for key in CALLER_FORBIDDEN_CONTEXT:
            ctx.pop(key, None)
        if req.action_properties:
            ctx["action"] = cedar_record(req.action_properties)
        ctx.update(hour=now.hour, weekday=WEEKDAYS[now.weekday()],
                   timestamp=int(now.timestamp()), source_ip=req.source or "",
                   risk=int(risk), risk_score=int(risk), principal_status=status)
        return ctx

    _last_context: tuple[tuple[Any, ...], str] | None = None

    def _context_json(self, req: EvalRequest, now: datetime, status: str, risk: int) -> str:
        """`context_for` as JSON; the items of one boxcar share `now`, source, status and risk,
        so without request context of their own they share the string (last one kept)."""
        if req.context or req.action_properties:
            return json.dumps(self.context_for(req, now, status, risk))
        key = (now, req.source, status, risk)
        last = self._last_context
        if last is not None and last[0] == key:
            return last[1]
        text = json.dumps(self.context_for(req, now, status, risk))
        self._last_context = (key, text)
        return text

    def evaluate(self, req: EvalRequest, now: datetime,
                 waive: frozenset[str] = frozenset()) -> Decision:
        start = time.perf_counter()
        try:
            decision = self._evaluate(req, now, waive)
        except Exception as exc:  # noqa: BLE001 - a decision denies on error, never raises
            decision = Decision(False, ["the request could not be evaluated"],
                                [f"{type(exc).__name__}: {exc}"[:300]])
        decision.policy_version = self.policy_version
        decision.latency_us = (time.perf_counter() - start) * 1e6
        return decision

    def risk_subject(self, principal: tuple[str, str]) -> str | None:
        """The id `evaluate` may ask the risk provider about for this principal, or None
        when it never asks (mirrors `_evaluate`: identity types only, by id, active ones)."""
        ptype, pid = principal
        if ptype not in KIND_BY_TYPE:
            return None
        rec = self.identity(pid)
        if rec is None or rec.uid[0] != ptype:
            # An imported entity of an identity type is scored by its id; an unknown one is
            # denied before any score is asked for.
            return pid if principal in self._entities else None
        return rec.id if rec.status == "active" else None

    def _evaluate(self, req: EvalRequest, now: datetime, waive: frozenset[str]) -> Decision:
        ptype, pid = req.principal
        status = "active"
        if ptype in KIND_BY_TYPE:
            rec = self.identity(pid)
            if rec is None or rec.uid[0] != ptype:
                if req.principal not in self._entities:
                    return Decision(False, ["unknown subject"])
            else:
                if rec.id != pid:  # addressed by name: Cedar sees the id
                    req.principal = rec.uid
                # INVARIANT: an inactive or expired principal is denied whatever the policies say.
                if rec.status != "active":
                    return Decision(False, [f"subject is {rec.status}"])
                if rec.expires_at is not None and rec.expires_at <= now.timestamp():
                    return Decision(False, ["subject has expired"])
                status = rec.status
        elif req.principal not in self._entities:
            return Decision(False, ["unknown subject"])
        policy_set, _ids = self.policy_set(req.principal[0], req.action, req.resource[0], waive)
        if policy_set is None:
            return Decision(False, ["no policy applies to this request"])
        risk = self._risk.score(req.principal[1]) if ptype in KIND_BY_TYPE else 0
        request = {"principal": {"type": req.principal[0], "id": req.principal[1]},
                   "action": {"type": req.action[0], "id": req.action[1]},
                   "resource": {"type": req.resource[0], "id": req.resource[1]},
                   "context": self._context_json(req, now, status, risk)}
        ents = self.entities_for(req)
        # The public wrapper copies the request and wraps the result in objects; on the hot
        # path we call the extension it delegates to, with the same arguments.
        raw = json.loads(_cedar_native.is_authorized_batch([request], policy_set,
                                                          ents._inner, None, False)[0])
        diag = raw.get("diagnostics", {})
        by_id = self._by_id
        determining = [by_id[i] for i in diag.get("reason", ()) if i in by_id]
        obligations, reasons = obligations_of(determining) if determining else ([], [])
        allowed = raw.get("decision") == "Allow"
        errors = list(diag.get("errors", ()))
        if not reasons:
            if allowed:
                reasons = ["permitted by policy"]
            elif determining:
                reasons = ["forbidden by policy"]
            else:
                reasons = ["no policy permits this request"]
        return Decision(allowed, reasons, errors, [p.id for p in determining], obligations)

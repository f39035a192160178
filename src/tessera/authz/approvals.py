"""Approval obligations at decision time: say what to ask for, and lift the forbid once.

A deny determined only by forbids annotated `@approval("group")` — and which the remaining
policies would permit — carries `approval_required` in the AuthZEN response context: the group
and the exact request to open an approval for (`POST /v1/approvals`). Presented again with
`context.approval_reference`, the same request is permitted once: the reference is handed to
the registered `ApprovalRedeemer` (the approvals service, wired in the container), which spends
it only for the same principal, action, resource, context values and approver group.

Pure apart from the redeemer call: the caller owns the transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tessera.audit import RequestContext
from tessera.authz.engine import (
    CALLER_FORBIDDEN_CONTEXT,
    ENRICHED_CONTEXT,
    Decision,
    EvalRequest,
    Snapshot,
)
from tessera.authz.ports import ApprovalBinding, ApprovalRedeemer

REFERENCE_KEY = "approval_reference"
_CONTEXT_ANY = re.compile(r"\bcontext\b")
_CONTEXT_KEY = re.compile(r'\bcontext\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*"([^"\\]*)"\s*\]'
                          r'|\s+has\s+(?:([A-Za-z_]\w*)|"([^"\\]*)"))')


def context_keys(texts: Iterable[str]) -> set[str] | None:
    """The context attributes the policies read; None when some use is not a plain attribute
    access (then every context value is bound)."""
    keys: set[str] = set()
    for text in texts:
        found = [next(g for g in m.groups() if g is not None) for m in
                 _CONTEXT_KEY.finditer(text)]
        if len(found) != len(_CONTEXT_ANY.findall(text)):
            return None
        keys.update(found)
    return keys


def binding(snap: Snapshot, req: EvalRequest, group: str) -> ApprovalBinding:
    """The request an approval is bound to (computed after evaluation: ids are resolved)."""
    _ps, ids = snap.policy_set(req.principal[0], req.action, req.resource[0])
    keys = context_keys(p.text for p in (snap.policy(i) for i in ids) if p is not None)
    values: dict[str, Any] = dict(req.context or {})
    if req.action_properties:
        values["action"] = req.action_properties
    # Server-side values (time, risk, source) change between asking and presenting.
    context = {k: v for k, v in values.items()
               if k not in ENRICHED_CONTEXT and k not in CALLER_FORBIDDEN_CONTEXT and
               (keys is None or k in keys)}
    return ApprovalBinding(principal=req.principal[1], action=req.action[1],
                           resource=f"{req.resource[0]}::{json.dumps(req.resource[1])}",
                           context=context, group=group)


def _redeem(session: Session | None, reference: Any, bound: ApprovalBinding,
            redeemer: ApprovalRedeemer | None, actor: str | None,
            ctx: RequestContext | None) -> str:
    """'' when the reference was accepted (and spent), else the refusal code."""
    if session is None:  # answering from memory: nothing can be spent
        return "approval_unavailable"
    code = "approval_unavailable" if redeemer is None else "approval_invalid"
    if isinstance(reference, str) and redeemer is not None:
        code = redeemer(session, reference, bound, actor=actor, ctx=ctx) or ""
    return code


def gated(snap: Snapshot, req: EvalRequest, permit: Decision, group: str, reference: Any, *,
          session: Session | None, redeemer: ApprovalRedeemer | None, actor: str | None,
          ctx: RequestContext | None) -> Decision:
    """A permit for a principal whose every action needs approval (a risk response): deny
    with `approval_required`, unless an approval reference for exactly this request is
    presented, which permits it once."""
    bound = binding(snap, req, group)
    if reference is not None:
        code = _redeem(session, reference, bound, redeemer, actor, ctx)
        if not code:
            permit.reasons = [f"permitted once with the approval of {group}",
                              *permit.reasons]
            permit.extra["approval"] = {"group": group, "used": True, "policies": []}
            return permit
    denied = Decision(allowed=False,
                      reasons=[("every action of this principal needs an approval "
                                "(risk response)")],
                      policy_version=permit.policy_version, latency_us=permit.latency_us)
    if reference is not None:
        denied.reasons.append(f"the approval reference was refused ({code})")
    denied.extra["approval_required"] = {"group": group, "policies": [], "reason": "risk",
                                         "request": bound.request()}
    return denied


def decide(snap: Snapshot, req: EvalRequest, now: datetime, *, session: Session | None,
           redeemer: ApprovalRedeemer | None, actor: str | None,
           ctx: RequestContext | None, required: str | None = None) -> Decision:
    """Evaluate `req`; on an approval-liftable deny, say what to ask for or redeem the
    presented reference. The reference is removed from the context before anything sees it.

    `required` (an approver group) turns every permit into such a deny: the principal is
    under a "require approval" risk response. Denies stay denies."""
    reference = req.context.pop(REFERENCE_KEY, None) if req.context else None
    decision = snap.evaluate(req, now)
    if decision.allowed:
        if required is not None:
            return gated(snap, req, decision, required, reference, session=session,
                         redeemer=redeemer, actor=actor, ctx=ctx)
        return decision  # a reference is not spent on a request that needs none
    approval = [o for o in decision.obligations if o.get("type") == "approval"]
    waive = frozenset(str(o["policy"]) for o in approval)
    groups = sorted({str(o["group"]) for o in approval})
    lifted = None
    if approval and not set(decision.policies) - waive and len(groups) == 1:
        lifted = snap.evaluate(req, now, waive)
    if lifted is None or not lifted.allowed:
        if reference is not None:
            decision.reasons.append("an approval cannot lift this deny")
        return decision
    bound = binding(snap, req, groups[0])
    decision.extra["approval_required"] = {"group": groups[0], "policies": sorted(waive),
                                           "request": bound.request()}
    if reference is None:
        return decision
    code = _redeem(session, reference, bound, redeemer, actor, ctx)
    if code:
        decision.reasons.append(f"the approval reference was refused ({code})")
        return decision
    lifted.reasons = [f"permitted once with the approval of {groups[0]}", *lifted.reasons]
    lifted.extra["approval"] = {"group": groups[0], "used": True, "policies": sorted(waive)}
    lifted.latency_us += decision.latency_us
    return lifted

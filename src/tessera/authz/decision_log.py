"""The decision log: the audit event of each decision or boxcarred batch, written in the
caller's transaction or handed to the audit group committer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy.orm import Session

from tessera.audit import AuditService, RequestContext
from tessera.audit import events as ev
from tessera.audit.groupcommit import WriteUnit
from tessera.authz.engine import Decision, EvalRequest

DEFAULT_SET = "default"  # the policy set AuthZEN decisions are made against
MAX_LOGGED_REQUEST = 4096


class DecisionLog:
    """Recording decisions (mixed into `AuthzService`, which sets `_audit`)."""

    _audit: AuditService

    @staticmethod
    def _decision_fields(req: EvalRequest, decision: Decision, *, actor: str | None,
                         policy_set: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "subject": {"type": req.principal[0], "id": req.principal[1]},
            "action": req.action[1], "resource": {"type": req.resource[0],
                                                  "id": req.resource[1]}}
        if req.principal_properties:
            request["subject"]["properties"] = req.principal_properties
        if req.resource_properties:
            request["resource"]["properties"] = req.resource_properties
        if req.action_properties:
            request["action_properties"] = req.action_properties
        if req.context:
            request["context"] = req.context
        if len(json.dumps(request, default=str)) > MAX_LOGGED_REQUEST:
            request = {k: request[k] for k in ("subject", "action", "resource")}
            request["subject"] = {"type": req.principal[0], "id": req.principal[1]}
            request["resource"] = {"type": req.resource[0], "id": req.resource[1]}
            request["truncated"] = True
        return {
            "outcome": "success" if decision.allowed else "failure",
            "actor": actor, "subject": req.principal[1], "action": req.action[1],
            "resource": f"{req.resource[0]}::{req.resource[1]}"[:400],
            "reasons": decision.reasons,
            "data": {"policy_set": policy_set, "request": request,
                     "decision": decision.allowed, "policies": decision.policies,
                     "obligations": decision.obligations, "errors": decision.errors,
                     "policy_version": decision.policy_version,
                     "latency_us": round(decision.latency_us, 1)}}

    def _batch_fields(self, items: list[tuple[EvalRequest, Decision]], *,
                      actor: str | None) -> dict[str, Any]:
        if len(items) == 1:
            return self._decision_fields(items[0][0], items[0][1], actor=actor,
                                         policy_set=DEFAULT_SET)
        decisions = [{"subject": f"{r.principal[0]}::{r.principal[1]}", "action": r.action[1],
                      "resource": f"{r.resource[0]}::{r.resource[1]}", "decision": d.allowed,
                      "policies": d.policies, "obligations": d.obligations,
                      "reasons": d.reasons, "latency_us": round(d.latency_us, 1)}
                     for r, d in items]
        allowed = sum(1 for _r, d in items if d.allowed)
        return {
            "outcome": "success" if allowed == len(items) else "failure",
            "actor": actor, "subject": None, "action": "evaluations", "resource": None,
            "reasons": [f"{allowed} of {len(items)} permitted"],
            "data": {"policy_set": DEFAULT_SET, "decisions": decisions,
                     "policy_version": items[0][1].policy_version if items else None}}

    def record_decision(self, session: Session, req: EvalRequest, decision: Decision, *,
                        actor: str | None, ctx: RequestContext | None,
                        policy_set: str = DEFAULT_SET) -> None:
        """The decision log: one audit event per decision, in the caller's transaction."""
        self._audit.record(session, ev.AUTHZ_DECISION, ctx=ctx, **self._decision_fields(
            req, decision, actor=actor, policy_set=policy_set))

    def record_batch(self, session: Session, items: list[tuple[EvalRequest, Decision]], *,
                     actor: str | None, ctx: RequestContext | None) -> None:
        """A boxcarred request's decisions: one audit event listing each decision in order."""
        self._audit.record(session, ev.AUTHZ_DECISION, ctx=ctx,
                           **self._batch_fields(items, actor=actor))

    def can_submit_decisions(self) -> bool:
        """Whether decision events go to the group committer (no transaction of our own)."""
        return self._audit.committer is not None and \
            ev.AUTHZ_DECISION.startswith(self._audit.options.group_types)

    def submit_batch(self, items: list[tuple[EvalRequest, Decision]], *, actor: str | None,
                     ctx: RequestContext | None,
                     intents: dict[str, list[Any]] | None = None
                     ) -> asyncio.Future[list[dict[str, Any]]]:
        """`record_batch` without a session, from a coroutine: the same event, handed straight
        to the group committer. The future resolves once the event is committed (await it
        before answering: no response leaves before its event is durable)."""
        if not self.can_submit_decisions():
            raise RuntimeError("decision events do not take the group-commit path")
        evt = self._audit.event(ev.AUTHZ_DECISION, ctx=ctx,
                                **self._batch_fields(items, actor=actor))
        # `intents`: checks the commit makes for the caller (e.g. a cached caller's
        # revisions); a unit they refuse fails its future.
        future = self._audit.submit_unit(WriteUnit(events=[evt],
                                                   intents=dict(intents or {})))
        if future is None:
            raise RuntimeError("the audit committer is closed")
        return future

    def commit_batch(self, items: list[tuple[EvalRequest, Decision]], *, actor: str | None,
                     ctx: RequestContext | None) -> None:
        """`submit_batch` from a worker thread: returns once the event is committed."""
        if not self.can_submit_decisions():
            raise RuntimeError("decision events do not take the group-commit path")
        evt = self._audit.event(ev.AUTHZ_DECISION, ctx=ctx,
                                **self._batch_fields(items, actor=actor))
        self._audit.commit_unit(WriteUnit(events=[evt]))

"""Plug-in points of just-in-time access: who may approve what.

The policy decision point connects here: a Cedar `@approval("group")` obligation names the
group; the built-in `RoleApproverPolicy` turns role definitions (the `access_roles` table) and
that group into an `ApproverSet`. Nobody in `excluded` (the subject and the requester) ever
approves, whatever the policy says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tessera.identity import ADMIN_ROLE


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


@dataclass(frozen=True)
class ActionRequest:
    """The exact request an approval is bound to: principal, action, resource, and the context
    values the policy looked at (only those: the rest of the context may vary)."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """SHA-256 over the canonical JSON of the four parts (sorted keys, no white space)."""
        body = {"principal": self.principal, "action": self.action,
                "resource": self.resource, "context": dict(self.context)}
        return hashlib.sha256(b"tessera.approval.v1\n" + canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class RoleDefinition:
    """A requestable role: how long it may be held and who approves it."""

    name: str
    max_duration: int
    approver_role: str | None = None
    owner_approves: bool = True
    approvals_required: int = 1
    sensitive: bool = False


@dataclass(frozen=True)
class Subject:
    """The identity an access request or action is about."""

    id: str
    owner_id: str | None


@dataclass(frozen=True)
class ApproverSet:
    """Who may approve: named identities or holders of a role; how many distinct ones."""

    identities: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    required: int = 1
    excluded: frozenset[str] = frozenset()

    def describe(self) -> str:
        parts = [f"identity {i}" for i in sorted(self.identities)]
        parts += [f"holders of role {r}" for r in sorted(self.roles)]
        return f"{self.required} approval(s) from: " + (", ".join(parts) or "nobody")


# The approver group naming the principal's owner (not a role): the risk response's approvals.
OWNER_GROUP = "owner"


class ApproverPolicy(Protocol):
    """Decides the approver set of an access request or of one action."""

    def for_access_request(self, role: RoleDefinition, subject: Subject,
                           requested_by: str) -> ApproverSet: ...

    def for_action(self, request: ActionRequest, subject: Subject | None, requested_by: str,
                   group: str | None, required: int = 1) -> ApproverSet: ...


class RoleApproverPolicy:
    """Built-in policy driven by role definitions and the obligation's group."""

    def __init__(self, fallback_role: str = ADMIN_ROLE) -> None:
        self.fallback_role = fallback_role

    def for_access_request(self, role: RoleDefinition, subject: Subject,
                           requested_by: str) -> ApproverSet:
        identities = frozenset({subject.owner_id}) if role.owner_approves and subject.owner_id \
            else frozenset()
        roles = frozenset({role.approver_role}) if role.approver_role else frozenset()
        if not identities and not roles:
            roles = frozenset({self.fallback_role})
        required = max(role.approvals_required, 2 if role.sensitive else 1)
        return ApproverSet(identities=identities, roles=roles, required=required,
                           excluded=frozenset({subject.id, requested_by}))

    def for_action(self, request: ActionRequest, subject: Subject | None, requested_by: str,
                   group: str | None, required: int = 1) -> ApproverSet:
        if group == OWNER_GROUP and subject is not None and subject.owner_id:
            identities, roles = frozenset({subject.owner_id}), frozenset[str]()
        elif group and group != OWNER_GROUP:
            identities, roles = frozenset[str](), frozenset({group})
        elif subject is not None and subject.owner_id:
            identities, roles = frozenset({subject.owner_id}), frozenset[str]()
        else:
            identities, roles = frozenset(), frozenset({self.fallback_role})
        return ApproverSet(identities=identities, roles=roles, required=max(1, required),
                           excluded=frozenset({request.principal, requested_by}))

"""Request and response shapes of just-in-time access and action approvals."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

ROLE = r"^[A-Za-z0-9._:-]{1,128}$"
EVENT = r"^[a-z0-9_.*]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleDefine(_Strict):
    name: str = Field(pattern=ROLE)
    description: str = Field("", max_length=1000)
    max_duration: int = Field(ge=60, le=90 * 86400, description="cap on a grant (s)")
    approver_role: str | None = Field(None, pattern=ROLE,
                                      description="holders of this role may approve")
    owner_approves: bool = Field(True, description="the identity's owner may approve")
    approvals_required: int = Field(1, ge=1, le=10)
    sensitive: bool = Field(False, description="sensitive roles need two approvers")


class RoleRead(BaseModel):
    name: str
    description: str
    max_duration: int
    approver_role: str | None
    owner_approves: bool
    approvals_required: int
    sensitive: bool


class AccessRequestCreate(_Strict):
    role: str = Field(pattern=ROLE)
    identity: str | None = Field(None, max_length=128,
                                 description="who gets the role (default: the caller)")
    duration: int = Field(ge=60, le=90 * 86400, description="seconds")
    justification: str = Field(min_length=3, max_length=2000)


class DecisionBody(_Strict):
    comment: str = Field("", max_length=1000)


class AccessRequestRead(BaseModel):
    id: str
    identity_id: str
    role: str
    requested_by: str
    justification: str
    duration: int
    status: str
    created_at: datetime
    decide_by: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    grant_id: str | None
    grant_expires_at: datetime | None
    approvals: list[dict[str, Any]]
    approvers: str


class ApprovalCreate(_Strict):
    principal: str = Field(min_length=1, max_length=200)
    action: str = Field(min_length=1, max_length=200)
    resource: str = Field(min_length=1, max_length=400)
    context: dict[str, Any] = Field(default_factory=dict,
                                    description="the context values the policy looked at")
    group: str | None = Field(None, pattern=ROLE,
                              description="approver group from the @approval obligation")
    approvals_required: int = Field(1, ge=1, le=10)
    summary: str | None = Field(None, max_length=2000)


class ApprovalRead(BaseModel):
    id: str
    principal: str
    action: str
    resource: str
    context: dict[str, Any]
    request_hash: str
    summary: str
    approvers: str
    status: str
    requested_by: str
    created_at: datetime
    decide_by: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    reference_expires_at: datetime | None
    approval_reference: str | None = Field(
        None, description="single-use; returned once, to the requester, after approval")


class ApprovalUse(_Strict):
    approval_reference: str = Field(min_length=8, max_length=200)
    principal: str = Field(min_length=1, max_length=200)
    action: str = Field(min_length=1, max_length=200)
    resource: str = Field(min_length=1, max_length=400)
    context: dict[str, Any] = Field(default_factory=dict)


class WebhookCreate(_Strict):
    url: AnyHttpUrl
    owner: str | None = Field(None, max_length=40,
                              description="only events about identities this human owns")
    events: list[str] = Field(default_factory=lambda: ["*"], max_length=50)


class WebhookRead(BaseModel):
    id: str
    url: str
    owner: str | None
    events: list[str]
    active: bool
    created_at: datetime
    secret: str | None = Field(None, description="HMAC secret; shown once, at creation")

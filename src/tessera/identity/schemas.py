"""Request and response shapes of the identity registry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Kind = Literal["agent", "model", "pipeline", "service", "human"]
Status = Literal["active", "suspended", "decommissioned"]
KINDS: tuple[str, ...] = ("agent", "model", "pipeline", "service", "human")

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
SCOPE_TOKEN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$"  # RFC 6749 §3.3 scope-token


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentityCreate(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="unique; lower case, digits, . _ -")
    kind: Kind
    owner: str | None = Field(None, max_length=40, description="id of the owning human")
    purpose: str = Field("", max_length=1000)
    expires_at: AwareDatetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    allowed_scopes: list[str] = Field(default_factory=list, max_length=100)
    allowed_audiences: list[str] = Field(default_factory=list, max_length=100)
    token_ttl: int | None = Field(None, ge=30, le=3600, description="access token lifetime (s)")
    dpop_required: bool = False
    may_act_for: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list, max_length=100,
        description="identity ids it may act for; '*' = any human")


class IdentityUpdate(_Strict):
    purpose: str | None = Field(None, max_length=1000)
    expires_at: AwareDatetime | None = None
    attributes: dict[str, Any] | None = None
    allowed_scopes: list[str] | None = Field(None, max_length=100)
    allowed_audiences: list[str] | None = Field(None, max_length=100)
    token_ttl: int | None = Field(None, ge=30, le=3600)
    dpop_required: bool | None = None
    may_act_for: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(
        None, max_length=100)


class StatusChange(_Strict):
    reason: str = Field("", max_length=1000)


class IdentityRead(BaseModel):
    id: str
    name: str
    kind: str
    owner: str | None
    purpose: str
    attributes: dict[str, Any]
    status: str
    client_id: str
    spiffe_id: str
    roles: list[str]
    allowed_scopes: list[str]
    allowed_audiences: list[str]
    token_ttl: int | None = None
    dpop_required: bool = False
    may_act_for: list[str] = []
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None
    status_changed_at: datetime | None
    status_changed_by: str | None
    status_reason: str | None


class CredentialCreate(_Strict):
    jwk: dict[str, Any]
    expires_at: AwareDatetime | None = None


class CredentialRead(BaseModel):
    id: str
    identity_id: str
    type: str
    kid: str
    thumbprint: str
    jwk: dict[str, Any]
    status: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class Page(BaseModel):
    items: list[Any]
    next_cursor: str | None

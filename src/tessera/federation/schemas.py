"""Request and response shapes for trusted issuers and their claim-mapping rules."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# An identity reference: `name` or `kind/name`, with `{claim}` placeholders.
IDENTITY_TEMPLATE = re.compile(r"^([a-z]+/)?[a-z0-9{][a-z0-9._{}-]{0,200}$")
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.:-]{1,64})\}")

MatchValue = str | list[str] | dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MappingRule(_Strict):
    """If every `match` condition holds, the token maps to `identity` (a template)."""

    match: dict[str, MatchValue] = Field(min_length=1, max_length=20)
    identity: str = Field(max_length=200)

    @field_validator("match")
    @classmethod
    def _conditions(cls, v: dict[str, MatchValue]) -> dict[str, MatchValue]:
        for claim, cond in v.items():
            if not 0 < len(claim) <= 64:
                raise ValueError("claim names are 1 to 64 characters")
            if isinstance(cond, dict) and (set(cond) != {"glob"} or not cond["glob"]):
                raise ValueError('a match object must be {"glob": "pattern"}')
            if isinstance(cond, list) and not (0 < len(cond) <= 100):
                raise ValueError("a list of values has 1 to 100 entries")
        return v

    @field_validator("identity")
    @classmethod
    def _template(cls, v: str) -> str:
        if not IDENTITY_TEMPLATE.match(v) or v.count("{") != v.count("}"):
            raise ValueError("identity must be `name` or `kind/name`, with optional {claim} "
                             "placeholders")
        stripped = PLACEHOLDER.sub("", v)
        if "{" in stripped or "}" in stripped:
            raise ValueError("malformed {claim} placeholder")
        return v


class IssuerCreate(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    issuer: str = Field(min_length=8, max_length=500, description="the tokens' iss, a URL")
    jwks_uri: str | None = Field(None, max_length=1000,
                                 description="default: from the discovery document")
    jwks: dict[str, Any] | None = Field(None, description="static JWKS instead of fetching")
    audiences: list[str] = Field(min_length=1, max_length=20)
    rules: list[MappingRule] = Field(default_factory=list, max_length=100)


class IssuerUpdate(_Strict):
    jwks_uri: str | None = Field(None, max_length=1000)
    jwks: dict[str, Any] | None = None
    audiences: list[str] | None = Field(None, min_length=1, max_length=20)
    rules: list[MappingRule] | None = Field(None, max_length=100)
    enabled: bool | None = None


class IssuerRead(BaseModel):
    id: str
    name: str
    issuer: str
    jwks_uri: str | None
    jwks: dict[str, Any] | None
    audiences: list[str]
    rules: list[dict[str, Any]]
    enabled: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime

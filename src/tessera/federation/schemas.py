"""Request and response shapes for trusted issuers and their claim-mapping rules."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tessera.federation.mapping import (
    PLACEHOLDER,
    glob_regex,
    has_refused_character,
    varying_claims,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# An identity reference: `name` or `kind/name`, with `{claim}` placeholders (used with
# fullmatch: `$` alone would also accept a trailing newline).
IDENTITY_TEMPLATE = re.compile(r"([a-z]+/)?[a-z0-9{][a-z0-9._{}-]{0,200}")

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
            if isinstance(cond, dict):
                if set(cond) != {"glob"} or not cond["glob"]:
                    raise ValueError('a match object must be {"glob": "pattern"}')
                glob_regex(cond["glob"])  # raises ValueError when malformed
            if isinstance(cond, list) and not (0 < len(cond) <= 100):
                raise ValueError("a list of values has 1 to 100 entries")
            values = cond if isinstance(cond, list) else [cond] if isinstance(cond, str) else []
            if any(not value or has_refused_character(value) for value in values):
                raise ValueError("match values are non-empty, without control or format "
                                 "characters")
        return v

    @field_validator("identity")
    @classmethod
    def _template(cls, v: str) -> str:
        if not IDENTITY_TEMPLATE.fullmatch(v) or v.count("{") != v.count("}"):
            raise ValueError("identity must be `name` or `kind/name`, with optional {claim} "
                             "placeholders")
        stripped = PLACEHOLDER.sub("", v)
        if "{" in stripped or "}" in stripped:
            raise ValueError("malformed {claim} placeholder")
        return v

    @model_validator(mode="after")
    def _one_varying_placeholder(self) -> MappingRule:
        # Two placeholders whose values both vary can spell one name from two different pairs
        # of values (`{a}-{b}`: a=x-y, b=z and a=x, b=y-z), so all but one must be pinned.
        if len(varying_claims(dict(self.match), self.identity)) > 1:
            raise ValueError("at most one {claim} in identity may vary: pin the others to one "
                             "value in match")
        return self


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

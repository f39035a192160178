"""Request and response shapes of dynamic secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ROLE = r"^[A-Za-z0-9._:-]{1,128}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConnectionCreate(_Strict):
    name: str = Field(pattern=NAME)
    engine: Literal["postgresql"] = "postgresql"
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field(min_length=1, max_length=63)
    username: str = Field(min_length=1, max_length=63)
    password: SecretStr = Field(SecretStr(""), description="stored sealed, never returned")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = \
        "prefer"
    verify: bool = Field(True, description="connect once before saving")


class ConnectionRead(BaseModel):
    id: str
    name: str
    engine: str
    host: str
    port: int
    database: str
    username: str
    sslmode: str
    created_at: datetime


class TemplateCreate(_Strict):
    name: str = Field(pattern=NAME)
    connection: str = Field(min_length=1, max_length=64, description="connection name or id")
    creation_sql: str = Field(min_length=1, max_length=8000)
    revocation_sql: str | None = Field(None, max_length=8000)
    default_ttl: int | None = Field(None, ge=60, le=30 * 86400)
    max_ttl: int | None = Field(None, ge=60, le=30 * 86400)
    allowed_roles: list[str] = Field(default_factory=list, max_length=50)


class TemplateRead(BaseModel):
    id: str
    name: str
    connection: str
    engine: str
    creation_sql: str
    revocation_sql: str | None
    default_ttl: int
    max_ttl: int
    allowed_roles: list[str]
    created_at: datetime


class CredentialsRequest(_Strict):
    identity: str | None = Field(None, max_length=128,
                                 description="admins only: on behalf of another identity")
    ttl: int | None = Field(None, ge=60, le=30 * 86400)


class IssuedCredentials(BaseModel):
    lease_id: str
    template: str
    username: str
    password: str
    host: str | None
    port: int | None
    database: str | None
    expires_at: datetime
    max_expires_at: datetime


class LeaseRead(BaseModel):
    id: str
    identity_id: str
    template: str
    engine: str
    username: str
    status: str
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    renewed_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None
    last_error: str | None


class RenewRequest(_Strict):
    increment: int | None = Field(None, ge=60, le=30 * 86400,
                                  description="new lifetime from now (s)")


class RevokeRequest(_Strict):
    reason: str = Field("", max_length=200)

"""Settings, read once from TESSERA_* environment variables into one object and passed in.

Nested sections use a double underscore: TESSERA_TOKENS__DEFAULT_TTL=600.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8700


class TokenSettings(BaseModel):
    default_ttl: int = Field(900, ge=30, le=3600, description="access token lifetime (s)")
    max_ttl: int = Field(3600, ge=30, le=3600, description="hard cap on any access token (s)")
    assertion_max_age: int = Field(300, ge=10, le=300, description="client assertion exp - iat (s)")
    leeway: int = Field(30, ge=0, le=120, description="clock skew allowed on iat/nbf (s)")
    # Issue 3: lifetimes by identity kind, refresh families, delegation, DPoP.
    ttl_by_kind: dict[str, int] = Field(default_factory=dict,
                                        description="access token lifetime per identity kind (s)")
    refresh_family_ttl: int = Field(86400, ge=60, le=30 * 86400,
                                    description="absolute refresh-token family lifetime (s)")
    refresh_idle_ttl: int = Field(8 * 3600, ge=60, le=30 * 86400,
                                  description="a refresh token unused this long dies (s)")
    max_delegation_depth: int = Field(2, ge=1, le=5, description="nested `act` depth limit")
    dpop_algs: list[str] = Field(default_factory=lambda: ["ES256", "EdDSA", "PS256", "RS256"],
                                 description="DPoP proof algorithms accepted (asymmetric)")
    dpop_max_age: int = Field(300, ge=10, le=600, description="DPoP proof iat window (s)")
    dpop_nonce: bool = Field(False, description="require server-issued DPoP nonces (RFC 9449 §8)")
    dpop_nonce_ttl: int = Field(300, ge=30, le=3600, description="lifetime of a DPoP nonce (s)")

    @field_validator("ttl_by_kind")
    @classmethod
    def _ttl_range(cls, v: dict[str, int]) -> dict[str, int]:
        if any(not 30 <= ttl <= 3600 for ttl in v.values()):
            raise ValueError("each lifetime must be between 30 and 3600 seconds")
        return v


class KeySettings(BaseModel):
    rotation_days: float = Field(30, gt=0, le=3650, description="scheduled rotation interval")
    prepublish_seconds: int = Field(900, ge=0, le=7 * 86400,
                                    description="a new key is in the JWKS this long before signing")


class IdentitySettings(BaseModel):
    max_expiry_days: int = Field(90, ge=1, le=3650)


class Settings(BaseSettings):
    """Everything Tessera reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", env_nested_delimiter="__",
                                      extra="ignore")

    data_dir: Path = Field(default=Path(".tessera"))
    database_url: str | None = None
    master_key: SecretStr | None = None
    issuer: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    url: str | None = None  # where CLI commands find the server
    node_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    max_body_bytes: int = 64 * 1024
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    keys: KeySettings = Field(default_factory=KeySettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tessera.db').resolve()}"

    @property
    def issuer_url(self) -> str:
        return (self.issuer or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def server_url(self) -> str:
        return (self.url or f"http://127.0.0.1:{self.port}").rstrip("/")

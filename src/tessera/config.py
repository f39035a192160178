"""Settings, read once from TESSERA_* environment variables into one object and passed in.

Nested sections use a double underscore: TESSERA_TOKENS__DEFAULT_TTL=600.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8700


class TokenSettings(BaseModel):
    default_ttl: int = Field(900, ge=30, le=3600, description="access token lifetime (s)")
    max_ttl: int = Field(3600, ge=30, le=3600, description="hard cap on any access token (s)")
    assertion_max_age: int = Field(300, ge=10, le=300, description="client assertion exp - iat (s)")
    leeway: int = Field(30, ge=0, le=120, description="clock skew allowed on iat/nbf (s)")
    # Lifetimes by identity kind, refresh families, delegation, DPoP.
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


class IdentitySettings(BaseModel):
    max_expiry_days: int = Field(90, ge=1, le=3650)


class AccessSettings(BaseModel):
    request_ttl: int = Field(86400, ge=60, le=30 * 86400,
                             description="how long an access request waits for a decision (s)")
    approval_ttl: int = Field(3600, ge=30, le=7 * 86400,
                              description="how long an action approval waits for a decision (s)")
    approval_ref_ttl: int = Field(300, ge=10, le=3600,
                                  description="lifetime of an approval reference once granted (s)")
    webhook_max_attempts: int = Field(6, ge=1, le=20)


class SecretsSettings(BaseModel):
    role_prefix: str = Field("tsr", pattern=r"^[a-z][a-z0-9_]{0,15}$",
                             description="prefix of every database role Tessera creates")
    default_ttl: int = Field(3600, ge=60, le=30 * 86400, description="lease lifetime (s)")
    max_ttl: int = Field(86400, ge=60, le=30 * 86400, description="hard cap on a lease (s)")


class CASettings(BaseModel):
    """The built-in certificate authority (SPIFFE X.509-SVIDs)."""

    intermediate: bool = Field(False, description="create an intermediate CA at init")
    root_days: int = Field(3650, ge=30, le=3650 * 3)
    intermediate_days: int = Field(365, ge=7, le=3650)
    svid_ttl: int = Field(3600, ge=60, le=86400, description="default certificate lifetime (s)")
    max_svid_ttl: int = Field(3600, ge=60, le=7 * 86400,
                              description="hard cap (s): no certificate outlives it")


class FederationSettings(BaseModel):
    """Trusted external issuers: how their JWKS are fetched."""

    allow_insecure_http: bool = Field(False, description="accept http:// issuers (dev only)")
    fetch_timeout: float = Field(5.0, gt=0, le=30, description="whole fetch deadline (s)")
    max_document_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    jwks_cache_seconds: int = Field(300, ge=10, le=86400)
    min_refetch_seconds: int = Field(30, ge=0, le=3600, description="unknown-kid refetch rate")
    max_token_age: int = Field(86400, ge=60, le=7 * 86400, description="now - iat at most (s)")
    ca_bundle: Path | None = Field(None, description="extra CA file for issuers' TLS")


class KeySettings(BaseModel):
    """Where private keys live: `software` (encrypted at rest) or `pkcs11` (an HSM)."""

    provider: str = Field("software", pattern="^(software|pkcs11)$")
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    rotation_days: float = Field(30, gt=0, le=3650, description="scheduled rotation interval")
    prepublish_seconds: int = Field(900, ge=0, le=7 * 86400,
                                    description="a new key is in the JWKS this long before signing")


class AuditSettings(BaseModel):
    checkpoint_every: int = Field(1000, ge=0, le=1_000_000, description="events per checkpoint")
    checkpoint_seconds: float = Field(60.0, ge=1, le=86400, description="checkpoint period (s)")
    group_commit: bool = True
    # Event types (prefixes) written by the group committer; the rest join the caller's
    # transaction, so they commit atomically with the change they record.
    group_types: tuple[str, ...] = ("oauth.token.issued", "oauth.token.refused",
                                    "authz.decision.")
    # Stream every committed event to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318).
    otlp_endpoint: str | None = None


class MonitorSettings(BaseModel):
    enabled: bool = True
    interval: float = Field(1.0, gt=0, le=60, description="event-stream poll period (s)")
    lease_seconds: float | None = Field(
        None, gt=0, le=3600,
        description="how long the process that last consumed the event stream keeps it from "
                    "the other workers and nodes (s): another takes over once the holder has "
                    "stopped for this long. At least twice `interval` (the holder renews "
                    "once half of it is gone); default the larger of 10 and 3 x `interval`")
    learning_days: float = Field(3.0, ge=0, le=90)
    risk_half_life_hours: float = Field(6.0, gt=0, le=24 * 30)
    # Responses by risk threshold: "notify", "require_approval", "suspend".
    responses: dict[str, int] = Field(default_factory=lambda: {
        "notify": 40, "require_approval": 60, "suspend": 85})

    @model_validator(mode="after")
    def _lease_outlasts_a_poll(self) -> MonitorSettings:
        # The holder renews its lease on a pass once half of it is gone: a pass must fall in
        # that half, or the lease lapses between two passes of a live holder.
        if self.lease_seconds is not None and self.lease_seconds < 2 * self.interval:
            raise ValueError("monitor.lease_seconds must be at least twice monitor.interval")
        return self

    @property
    def lease(self) -> float:
        """The lease in seconds: `lease_seconds`, or by default the larger of 10 and three
        poll intervals."""
        return self.lease_seconds if self.lease_seconds is not None else \
            max(10.0, 3 * self.interval)


class AuthzSettings(BaseModel):
    # Per-node memory of fully checked PDP callers (bearer tokens) and of the principals under
    # a "require_approval" risk response. A change made through this node takes effect at
    # once; one made through another node within this many seconds. 0 turns a cache off.
    caller_cache_seconds: float = Field(1.0, ge=0, le=60)
    risk_gate_cache_seconds: float = Field(1.0, ge=0, le=60)


class HTTPSettings(BaseModel):
    """What one `tessera serve` worker accepts from a client before it has a request, and how
    long it waits: each bound caps what an unauthenticated peer can make a worker hold."""

    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024,
                                  description="request line and headers together (bytes); "
                                              "over it: 431 and the connection closes")
    max_headers: int = Field(100, ge=8, le=1000,
                             description="header fields in one request; over it: 431")
    header_timeout: float = Field(10.0, gt=0, le=300,
                                  description="from a request's first byte (or the connection) "
                                              "to its last header; then 408 and close (s)")
    body_timeout: float = Field(30.0, gt=0, le=3600,
                                description="from the end of the headers to the end of the "
                                            "body; then 408 (unless answered) and close (s)")
    keep_alive_timeout: float = Field(5.0, gt=0, le=300,
                                      description="an idle connection between requests is "
                                                  "closed after this long (s)")
    max_connections: int = Field(
        1000, ge=0, le=1_000_000,
        description="open connections (and requests in progress) per worker process at which "
                    "a request gets 503 instead of being served; 0: no limit")


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
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    # FastAPI's OpenTelemetry spans/metrics/logs per HTTP request (needs an OTel SDK set up).
    # Off by default: even unconfigured, FastAPI checks for a provider on every request.
    http_telemetry: bool = False
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    ca: CASettings = Field(default_factory=CASettings)
    federation: FederationSettings = Field(default_factory=FederationSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    authz: AuthzSettings = Field(default_factory=AuthzSettings)

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

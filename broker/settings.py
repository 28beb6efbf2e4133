"""Typed settings read from ``BROKER_*`` environment variables.

Settings are validated when the process starts. In production mode every secret must be provided
explicitly; in development mode the CLI fills the gaps (embedded PostgreSQL, a generated key ring under
``.broker/``) and says so loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Every knob broker has. Field names map to ``BROKER_<NAME>`` variables."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="ignore", frozen=True)

    env: Environment = "development"
    database_url: str | None = None
    # Scale-out (docs/operations.md): a streaming replica for introspection and admin reads, and
    # PgBouncer in transaction mode in front of either (no prepared statement, no session parameter).
    database_read_url: str | None = None
    database_pooler: Literal["none", "pgbouncer"] = "none"
    database_migrate_url: str | None = None  # direct, past the pooler: migrations hold a session advisory lock
    data_dir: Path = Path(".broker")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    issuer: str = "http://127.0.0.1:8000"
    resources: tuple[str, ...] = ()

    keys: SecretStr | None = None
    key_file: Path | None = None
    hash_key: SecretStr | None = None

    token_env: str = Field(default="sandbox", pattern=r"^[a-z]{1,16}$")
    access_token_ttl: int = Field(default=900, ge=60, le=86_400)
    refresh_token_ttl: int = Field(default=30 * 86_400, ge=300, le=400 * 86_400)
    refresh_grace_seconds: int = Field(default=30, ge=0, le=600)

    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    db_pool_size: int = Field(default=4, ge=1, le=200)  # docs/configuration.md: why 4
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    db_statement_timeout_ms: int = Field(default=10_000, ge=100)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool | None = None

    # Keys and audit (broker.keys, broker.audit): how long a replica trusts a cached tenant data key
    # (a key shredded elsewhere stops being used here within this time), and how often each serving
    # process seals new audit rows into their tenant's hash chain (0 disables; `broker audit seal`).
    data_key_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    audit_seal_interval_seconds: float = Field(default=1.0, ge=0, le=3600)

    # Partner webhooks (broker.webhooks): the delivery worker and outbound safety.
    webhook_worker: bool = True
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_lease_seconds: float = Field(default=60.0, gt=0, le=3600)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_base_seconds: float = Field(default=10.0, gt=0, le=86_400)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    webhook_retention_days: int = Field(default=30, ge=0, le=3650)
    webhook_allow_private: bool | None = None
    webhook_allow_http: bool | None = None

    # Gateway mode (broker.gateway): calls to a tenant's upstream, its circuit breaker, and the worker
    # that retries upstream revocations and user removals until the upstream confirms them.
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    upstream_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    upstream_retries: int = Field(default=2, ge=0, le=10)
    upstream_max_connections: int = Field(default=100, ge=1, le=10_000)
    upstream_breaker_failures: int = Field(default=5, ge=1, le=1000)
    upstream_breaker_open_seconds: float = Field(default=10.0, gt=0, le=3600)
    upstream_worker: bool = True
    upstream_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    upstream_backoff_base_seconds: float = Field(default=2.0, gt=0, le=86_400)
    upstream_backoff_max_seconds: float = Field(default=300.0, gt=0, le=86_400)
    upstream_allow_http: bool | None = None

    # Failed client and admin authentication (broker.http.ratelimit): sliding-window limits, shared
    # across replicas through Redis when BROKER_REDIS_URL is set, else kept per process.
    redis_url: str | None = None
    auth_failure_window_seconds: int = Field(default=60, ge=1, le=3600)
    auth_failures_per_client_address: int = Field(default=10, ge=1)
    auth_failures_per_address: int = Field(default=100, ge=1)
    auth_failures_per_client: int = Field(default=100, ge=1)

    @field_validator("resources", mode="before")
    @classmethod
    def _split_resources(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    # Observability (docs/operations.md): Prometheus at /metrics (optionally behind a bearer token),
    # the directory the workers of one server share their metrics through, and OpenTelemetry tracing.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    metrics_dir: Path | None = None
    otel_enabled: bool = False
    otel_endpoint: str | None = None
    otel_service_name: str = "broker"

    @field_validator("database_url", "database_read_url", "database_migrate_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            msg = "must be a postgresql:// URL"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _webhook_lease_outlives_timeout(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            msg = "BROKER_WEBHOOK_LEASE_SECONDS must exceed BROKER_WEBHOOK_TIMEOUT_SECONDS"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.env != "production":
            return self
        if self.database_url is None:
            msg = "BROKER_DATABASE_URL is required in production"
            raise ValueError(msg)
        if self.keys is None and self.key_file is None:
            msg = "BROKER_KEYS or BROKER_KEY_FILE is required in production"
            raise ValueError(msg)
        if self.hash_key is None and self.key_file is None:
            msg = "BROKER_HASH_KEY (or a BROKER_KEY_FILE holding hash_key) is required in production"
            raise ValueError(msg)
        return self

    @property
    def async_database_url(self) -> str:
        """The database URL with the asyncpg driver named, as SQLAlchemy wants it."""
        if self.database_url is None:
            msg = "no database URL configured"
            raise RuntimeError(msg)
        return to_asyncpg_url(self.database_url)

    @property
    def json_logs(self) -> bool:
        """Whether logs are JSON lines (the default outside development)."""
        return self.log_json if self.log_json is not None else self.env != "development"

    @property
    def webhooks_may_target_private(self) -> bool:
        """Whether webhook URLs may point at loopback, link-local or private addresses (not in production)."""
        return self.webhook_allow_private if self.webhook_allow_private is not None else self.env != "production"

    @property
    def webhooks_may_use_http(self) -> bool:
        """Whether webhook URLs may be plain ``http://`` (not in production, unless allowed)."""
        return self.webhook_allow_http if self.webhook_allow_http is not None else self.env != "production"

    @property
    def upstreams_may_use_http(self) -> bool:
        """Whether an upstream base URL may be plain ``http://`` (not in production, unless allowed)."""
        return self.upstream_allow_http if self.upstream_allow_http is not None else self.env != "production"

    @property
    def allowed_resources(self) -> frozenset[str]:
        """Resource indicators (RFC 8707) a client may ask for: the issuer and any configured ones."""
        return frozenset((self.issuer, *self.resources))


def to_asyncpg_url(url: str) -> str:
    """Return ``url`` with the ``postgresql+asyncpg`` scheme."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def describe_validation_error(exc: ValidationError) -> str:
    """Render a settings error as one line per offending variable, naming the variable."""
    lines = []
    for error in exc.errors():
        loc = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"BROKER_{loc}: {message}" if loc else message)
    return "\n".join(lines)

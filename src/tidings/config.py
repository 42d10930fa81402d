"""Configuration: environment variables `TIDINGS_*`, then an optional TOML file.

Precedence, highest first: environment, the TOML file named by `TIDINGS_CONFIG` (or
`--config`), defaults. Nested tables in TOML map to nested settings; in the environment
use a double underscore: `TIDINGS_GATEWAY__PING_INTERVAL=10`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class WorkerSettings(BaseModel):
    enabled: bool = True
    concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Slots of the pool that runs both lanes (transactional first, then bulk).",
    )
    transactional_concurrency: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Slots of the pool that runs only transactional work. Its jobs mostly "
        "wait on the database and providers, so slots are cheap; when they are all taken, a "
        "new transactional job is not handed off but queued and claimed, which costs a write "
        "transaction and up to a poll interval.",
    )
    lease_seconds: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=0.2, gt=0)
    batch: int = Field(default=32, ge=1, le=1000)
    done_job_retention: float = Field(
        default=7 * 86400,
        ge=0,
        description="Seconds a finished (done) job is kept after it was due; older ones are "
        "deleted in the background. 0 keeps them all. Dead jobs are always kept.",
    )


def _default_channels() -> dict[str, Any]:
    return {
        "default": {
            "history_size": 100,
            "history_ttl": "5m",
            "presence": True,
        },
        "namespaces": {},
    }


class GatewaySettings(BaseModel):
    path: str = "/connection/websocket"
    allowed_origins: list[str] = Field(default_factory=list)  # empty: any origin
    token_rsa_public_key_file: str | None = None
    token_ecdsa_public_key_file: str | None = None
    token_jwks_file: str | None = Field(
        default=None,
        description="A JSON Web Key Set (RFC 7517) of RS*/ES* public keys, picked by the "
        "token's kid; re-read when the file changes.",
    )
    token_audience: str | None = None
    token_issuer: str | None = None
    allow_anonymous: bool = False
    ping_interval: float = Field(default=25.0, ge=0)
    pong_timeout: float = Field(default=10.0, ge=0)
    max_buffer_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    max_subscriptions: int = Field(default=128, ge=1)
    commands_per_second: float = Field(default=50.0, ge=0)
    max_messages_in_frame: int = Field(
        default=16,
        ge=1,
        description="Publications of one channel that arrive in the same event-loop pass "
        "go to each subscriber in one frame, newline-delimited, up to this many.",
    )
    presence_ttl: float = Field(default=60.0, gt=0)
    channels: dict[str, Any] = Field(default_factory=_default_channels)


class PresenceSettings(BaseModel):
    """User presence across devices and typing (see docs/operations.md)."""

    idle_after: float = Field(default=120.0, gt=0)
    probably_offline_after: float = Field(default=45.0, gt=0)
    offline_after: float = Field(default=90.0, gt=0)
    last_seen_interval: float = Field(default=60.0, gt=0)
    update_interval: float = Field(default=5.0, ge=0)
    typing_ttl: float = Field(default=6.0, gt=0)
    typing_throttle: float = Field(default=3.0, ge=0)
    typing_max_members: int = Field(default=200, ge=0)
    max_devices: int = Field(default=16, ge=1)
    sweep_interval: float = Field(default=2.0, gt=0)
    max_contacts: int = Field(default=1000, ge=1, le=100_000)
    contacts_namespace: str = Field(
        default="presence",
        pattern=r"^[A-Za-z0-9_\-]{2,}$",
        description="Gateway namespace of the personal channels `<namespace>:#<user>` that "
        "carry the presence changes of the user's contacts; added to gateway.channels "
        "(user-limited, no history) unless configured there.",
    )


class SmtpSettings(BaseModel):
    """Email over SMTP (see docs/operations.md). Unset `host`: no email provider."""

    host: str | None = None
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = Field(
        default="none",
        description="none: plain (a local relay); starttls: upgrade after connecting "
        "(port 587); tls: TLS from the first byte (port 465).",
    )
    username: str | None = None
    password: str | None = None
    validate_certs: bool = True
    timeout: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=4, ge=1, le=256)
    max_messages_per_connection: int = Field(default=100, ge=1)
    idle_timeout: float = Field(default=60.0, gt=0)
    noop_after: float = Field(default=5.0, ge=0)
    local_hostname: str | None = None
    envelope_from: str | None = None
    message_id_domain: str | None = None


class WebhookSettings(BaseModel):
    """Outgoing webhooks (see docs/operations.md)."""

    timeout: float = Field(default=15.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=100, ge=1)
    allow_private_addresses: bool = Field(
        default=True,
        description="Whether endpoints may be on loopback or private networks; turn off "
        "when untrusted parties register endpoints.",
    )
    disable_after_failures: int = Field(default=50, ge=1)
    disable_after_seconds: float = Field(default=5 * 24 * 3600.0, ge=0)
    rotation_grace: float = Field(default=24 * 3600.0, ge=0)


class RateLimitSettings(BaseModel):
    rate: float = Field(gt=0, description="messages a second")
    burst: float = Field(ge=1)


class ProviderSettings(BaseModel):
    """Circuit breaker and rate limit around every provider (per endpoint for webhooks)."""

    failure_threshold: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window: float = Field(default=60.0, gt=0)
    min_calls: int = Field(default=20, ge=1)
    cooldown: float = Field(default=30.0, ge=0)
    half_open_probes: int = Field(default=1, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    rate_limits: dict[Literal["email", "webhook"], RateLimitSettings] = Field(
        default_factory=dict,
        description="Per channel: at most `rate` messages a second, `burst` at once.",
    )


class InboxSettings(BaseModel):
    """The in-app inbox and how browsers authenticate to it (see docs/api.md)."""

    hmac_secret: str | None = Field(
        default=None,
        description="Secret for subscriber hashes: hex(HMAC-SHA256(secret, subscriber id)). "
        "Unset: browsers authenticate with subscriber tokens only.",
    )
    namespace: str = Field(
        default="inbox",
        pattern=r"^[A-Za-z0-9_\-]{2,}$",
        description="Gateway namespace of the personal channels `<namespace>:#<subscriber>`; "
        "added to gateway.channels (user-limited, short history) unless configured there.",
    )
    token_ttl: float = Field(default=3600.0, ge=1, le=86400)
    max_data_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)


class FrequencyCapSettings(BaseModel):
    limit: int = Field(ge=1)
    window: float = Field(gt=0, description="seconds")
    channel: Literal["in_app", "email", "sms", "push", "webpush", "webhook"] | None = None
    on_exceed: Literal["hold", "suppress"] = "hold"


class NotifySettings(BaseModel):
    """The notification orchestrator (see docs/workflows.md)."""

    workflows: list[str] = Field(
        default_factory=list,
        description="YAML/JSON workflow files or directories of them, loaded at start.",
    )
    sender: str = Field(
        default="Tidings <notifications@localhost>", description="From: of email messages."
    )
    batch_size: int = Field(default=500, ge=1, le=5000)
    bulk_batch_size: int = Field(default=500, ge=1, le=5000)
    bulk_commit_size: int = Field(
        default=50,
        ge=1,
        le=5000,
        description="Runs per write transaction of a bulk batch: smaller transactions keep "
        "the waits of transactional writers behind them short.",
    )
    bulk_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Bulk batches one process runs at once; default 1 on SQLite (one writer: "
        "more only queue in front of transactional work), 4 on PostgreSQL. While "
        "transactional work ran within the last second, only the oldest goes on.",
    )
    max_recipients: int = Field(default=1000, ge=1, le=100_000)
    frequency_caps: list[FrequencyCapSettings] = Field(default_factory=list)
    delivery_attempts: int = Field(default=8, ge=1, le=100)
    send_batch: int = Field(
        default=50,
        ge=1,
        le=500,
        description="Due bulk messages (email, webhooks) per delivery job: read, sent at once "
        "over the provider's connections and settled in one transaction; a failed one goes "
        "on as a job of its own. 1: a job per message.",
    )
    workflow_refresh: float = Field(default=5.0, ge=0)
    history_retention: float = Field(
        default=30 * 86400,
        ge=0,
        description="Seconds the history of a finished notification run (its steps, messages "
        "and trail) is kept after its last change, and an event after its creation once no "
        "run of it is left; older ones are deleted in the background. 0 keeps them all. A "
        "deleted event frees its idempotency key. Waiting runs and inbox items are kept.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = "sqlite+aiosqlite:///./var/tidings.db"
    broker: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tidings"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)
    token_secret: str | None = Field(
        default=None,
        description="HMAC secret for connection and subscription JWTs (HS256). Unset: one "
        "is generated once into var/token_secret.",
    )
    gc_freeze_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between moves of surviving objects out of the garbage "
        "collector's reach (gc.freeze): a full collection then walks at most what was "
        "created since; 0 leaves CPython's collector as it is.",
    )
    worker: WorkerSettings = WorkerSettings()
    gateway: GatewaySettings = GatewaySettings()
    presence: PresenceSettings = PresenceSettings()
    inbox: InboxSettings = InboxSettings()
    smtp: SmtpSettings = SmtpSettings()
    webhooks: WebhookSettings = WebhookSettings()
    providers: ProviderSettings = ProviderSettings()
    notify: NotifySettings = NotifySettings()
    template_layouts: dict[str, str] = Field(
        default_factory=dict,
        description="Named layouts (Jinja2 placing {{ content }}) that template versions use.",
    )

    def secret_file(self) -> Path:
        """Where the generated token secret lives when `token_secret` is not set."""
        return Path("var") / "token_secret"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("TIDINGS_CONFIG")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Read settings; `config_file` takes the place of `TIDINGS_CONFIG`."""
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        os.environ["TIDINGS_CONFIG"] = config_file
    elif (path := os.environ.get("TIDINGS_CONFIG")) and not Path(path).is_file():
        raise FileNotFoundError(f"config file not found (TIDINGS_CONFIG): {path}")
    return Settings(**overrides)

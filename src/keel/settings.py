"""One settings tree for the whole platform.

Every value comes from ``KEEL_``-prefixed environment variables (nested with ``__``, e.g.
``KEEL_SENTRY__DSN``) or a ``.env`` file in the working directory. Invalid values stop
start-up with :class:`SettingsError`, whose message names the variable.
"""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "KEEL_"
NESTED_DELIMITER = "__"

#: Every service Keel knows, in mount order. Later issues add their packages; a name here
#: without a package is refused by ``--services`` until it exists (see ``keel.services``).
KNOWN_SERVICES = (
    "auth",
    "secrets",
    "config",
    "flags",
    "audit",
    "notify",
    "jobs",
    "storage",
    "gateway",
)


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    console = "console"


class SentrySettings(BaseModel):
    dsn: SecretStr | None = None
    environment: str | None = None
    traces_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)


class OtelSettings(BaseModel):
    enabled: bool = False
    service_name: str = "keel"
    #: OTLP/HTTP endpoint, e.g. ``http://collector:4318``; empty keeps spans in-process only.
    exporter_endpoint: str | None = None


class DatabasePoolSettings(BaseModel):
    #: Connections each process keeps open.
    size: int = Field(default=20, ge=1, le=500)
    #: Extra connections opened under a burst and closed as soon as they are returned; 0
    #: (a fixed pool) makes a burst wait for a connection instead of paying for new ones.
    max_overflow: int = Field(default=0, ge=0, le=500)
    #: Seconds a request waits for a free connection when all are in use (then 503).
    timeout_seconds: float = Field(default=10.0, gt=0)
    #: Seconds opening a connection, or proving a pooled one alive, may take before the
    #: database counts as unreachable (503 with ``Retry-After``).
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    #: Seconds one statement may wait for the database's answer before its connection is
    #: dropped and the request answers 503; 0 waits for ever. Migrations are exempt.
    command_timeout_seconds: float = Field(default=5.0, ge=0)
    #: SQLite only: seconds a write waits for the database's one writer turn before the
    #: request answers 503 with ``Retry-After``. A machine shared with other heavy work (a CI
    #: runner) may need longer than a laptop.
    sqlite_busy_timeout_seconds: float = Field(default=5.0, gt=0, le=600)


class AuthSettings(BaseModel):
    #: The ``iss`` of every token; default: the URL Keel is reached at (``http://host:port``).
    issuer: str | None = None
    #: The ``aud`` of access tokens unless a client asks for another.
    audience: str = "keel"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=60)
    #: ``RS256`` (default), ``ES256`` or ``EdDSA``.
    signing_algorithm: Literal["RS256", "ES256", "EdDSA"] = "RS256"
    #: Rotate the signing key this often (background task); 0 turns scheduled rotation off.
    signing_key_rotation_days: int = Field(default=30, ge=0)
    #: How long a new key is published in JWKS before it signs (JWKS cache lifetime).
    jwks_max_age_seconds: int = Field(default=300, ge=0, le=86_400)
    password_min_length: int = Field(default=12, ge=8, le=256)
    password_history: int = Field(default=5, ge=0, le=50)
    #: Failed logins before an account is locked; each further failure doubles the lock.
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_base_seconds: int = Field(default=30, ge=1)
    lockout_max_seconds: int = Field(default=3600, ge=1)
    #: Login attempts allowed per client IP per minute.
    login_rate_per_ip_per_minute: int = Field(default=30, ge=1)
    #: Argon2id cost; the defaults are OWASP's recommended minimum (19 MiB, 2 passes).
    argon2_memory_kib: int = Field(default=19_456, ge=8)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)


_CATEGORY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: A century: longer periods are almost surely a typo for "keep forever" (0).
_MAX_RETENTION_DAYS = 36_500


class AuditSettings(BaseModel):
    #: Days an event's document is kept, per action category (``security``, ``access``,
    #: ``change``, ``finance``... the ``category`` of the action catalogue), e.g.
    #: ``KEEL_AUDIT__RETENTION_DAYS='{"access": 90, "security": 730}'``. 0 keeps forever.
    #: Retention erases the document only; the event's leaf, and so every proof, stays.
    retention_days: Annotated[
        dict[str, Annotated[int, Field(ge=0, le=_MAX_RETENTION_DAYS)]], NoDecode
    ] = Field(default_factory=dict)
    #: Days for the categories ``retention_days`` does not list; 0 (default) keeps forever.
    default_retention_days: int = Field(default=0, ge=0, le=_MAX_RETENTION_DAYS)
    #: Documents one retention transaction erases at most (one ``audit.retention.erase``
    #: event records them); a larger backlog takes several transactions of the same run.
    retention_batch_size: int = Field(default=10_000, ge=1, le=100_000)

    @field_validator("retention_days", mode="before")
    @classmethod
    def _decode_json(cls, value: Any) -> Any:
        # Decoded here rather than by pydantic-settings, so bad JSON names its variable.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('must be a JSON object, e.g. {"access": 90}') from None
        return value

    @field_validator("retention_days")
    @classmethod
    def _categories(cls, value: dict[str, int]) -> dict[str, int]:
        for category in value:
            if not _CATEGORY.fullmatch(category):
                raise ValueError(
                    f"{category!r} is not an action category (lowercase letters, digits, _)"
                )
        return value


class SecretsSettings(BaseModel):
    #: ``KEEL_SECRETS__MASTER_KEY`` / ``KEEL_SECRETS__MASTER_KEY_FILE``: aliases of
    #: ``KEEL_MASTER_KEY`` / ``KEEL_MASTER_KEY_FILE``, under the names the secrets service's
    #: documentation uses. One master key serves every service; set either name (both only
    #: with the same value).
    master_key: SecretStr | None = None
    master_key_file: Path | None = None


class ChangeStreamSettings(BaseModel):
    #: Days change events are kept for resuming streams; a resume point older than that
    #: gets an ``event: reset`` (reload everything).
    retention_days: int = Field(default=7, ge=1, le=_MAX_RETENTION_DAYS)
    #: Seconds between the comment lines that keep an idle stream's connection open.
    heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)


class JobsSettings(BaseModel):
    """The jobs service (issue 18): limits of what a job carries, and how long ended jobs stay."""

    #: Days a completed or cancelled job is kept before retention deletes it; 0 keeps forever.
    completed_retention_days: float = Field(default=7, ge=0, le=_MAX_RETENTION_DAYS)
    #: Days a discarded job (the dead letter queue) is kept; 0 keeps forever.
    discarded_retention_days: float = Field(default=30, ge=0, le=_MAX_RETENTION_DAYS)
    #: Jobs one retention statement deletes at most: a short transaction each, never one
    #: long lock over the table.
    retention_batch_size: int = Field(default=1000, ge=1, le=100_000)
    #: Largest JSON-encoded ``args`` of one job.
    max_args_bytes: int = Field(default=65_536, ge=1024)
    #: Largest JSON-encoded ``result`` (and ``progress``) a worker may report.
    max_result_bytes: int = Field(default=16_384, ge=256)
    #: Most jobs one batch enqueue may carry.
    max_batch: int = Field(default=10_000, ge=1, le=100_000)
    #: Seconds a claim holds a job unless the worker asks otherwise or heartbeats.
    default_lease_seconds: float = Field(default=30, gt=0, le=3600)
    #: The longest a fetch waits for jobs (a worker's ``wait_seconds`` above it is cut to it):
    #: a proxy in front of Keel must let a request run this long.
    max_fetch_wait_seconds: float = Field(default=30, ge=0, le=30)
    #: The lease of Keel's own tasks (``keel.jobs.runner``), extended every third of it while
    #: a task runs: a runner that dies has its jobs taken over within this.
    platform_lease_seconds: float = Field(default=30, ge=1, le=600)


class NotifySettings(BaseModel):
    """The notification service (issue 19): limits of what a send carries, and delivery."""

    #: Largest JSON-encoded ``data`` of one message (the template's variables).
    max_data_bytes: int = Field(default=32_768, ge=1024, le=1_048_576)
    #: Most recipients one batch send may carry.
    max_batch: int = Field(default=100_000, ge=1, le=1_000_000)
    #: Largest body of a batch send (``KEEL_MAX_BODY_BYTES`` is every other request's limit).
    max_batch_body_bytes: int = Field(default=64 * 1_048_576, ge=1_048_576)
    #: Messages one delivery job sends (a batch becomes jobs of this many).
    delivery_chunk: int = Field(default=100, ge=1, le=1000)
    #: Attempts a message gets when its providers fail before it is marked failed.
    max_attempts: int = Field(default=8, ge=1, le=50)
    #: Seconds a provider's credentials are kept after a read from the secrets service.
    credentials_ttl_seconds: float = Field(default=60, ge=0, le=3600)
    #: Open pixels and rewritten links in HTML email.
    track_opens: bool = True
    track_clicks: bool = True


#: Networks never accepted as a gateway upstream's address (written policies are refused):
#: link-local (cloud metadata), "this network", the unspecified and multicast addresses,
#: broadcast, and the metadata endpoints outside link-local (Alibaba, AWS IPv6).
DEFAULT_BLOCKED_UPSTREAM_NETWORKS = (
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
)


class GatewaySettings(BaseModel):
    """The gateway service (issue 20): which tenant's routes a gateway process serves, where
    its proxy listens, and which upstream addresses a policy may never name."""

    #: The tenant (slug) whose routes this process's proxy serves.
    tenant: str = Field(default="default", min_length=1, max_length=63)
    #: ``host:port`` of the proxy listener (``None``: no proxy in this process).
    proxy_listen: str | None = None
    #: Bind the proxy's port with ``SO_REUSEPORT``: with ``keel serve --workers N`` every
    #: worker process runs a proxy on the same port and the kernel spreads the connections.
    #: Needs ``KEEL_REDIS_URL``: in-memory rate limits would count per process (N times the
    #: limit); health, breaker and cache state is each process's own (see docs/gateway.md).
    proxy_reuse_port: bool = False
    #: CIDRs refused as upstream addresses when a policy is written (a literal IP in one, or
    #: a host name resolving into one), e.g. ``KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS=
    #: '["169.254.0.0/16","10.99.0.0/16"]'`` or comma-separated.
    blocked_upstream_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_UPSTREAM_NETWORKS)
    )
    #: False: 127.0.0.0/8 and ::1 are refused as upstreams too (a gateway in front of
    #: services on other hosts never needs them).
    allow_loopback_upstreams: bool = True
    #: The last known good policy a replica starts from when the database is unreachable
    #: (``None``: ``<data_dir>/gateway-policy.json``).
    policy_cache_path: Path | None = None

    @field_validator("proxy_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8080 or [::]:8080")
        return value

    @field_validator("blocked_upstream_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("must be a JSON list or comma-separated CIDRs") from None
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("blocked_upstream_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (e.g. 169.254.0.0/16)") from None
        return list(dict.fromkeys(networks))

    def cache_path(self, data_dir: Path) -> Path:
        """Where the last known good policy is kept."""
        return self.policy_cache_path or data_dir / "gateway-policy.json"


class S3Settings(BaseModel):
    """An S3-compatible store holding every tenant's objects in one bucket of its own."""

    #: ``None``: AWS's endpoint for the region; set it for any other S3-compatible store.
    endpoint_url: str | None = None
    region: str = "us-east-1"
    #: The S3 bucket Keel writes into (it must exist).
    bucket: str | None = None
    #: A prefix for every key Keel writes (``keel/``), to share a bucket with others.
    prefix: str = ""
    #: ``None``: the AWS SDK's own chain (environment, profile, instance role).
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    #: ``path`` (``endpoint/bucket/key``) works with every S3-compatible store.
    addressing_style: Literal["path", "virtual"] = "path"
    #: Seconds to connect, and to wait for each answer, before the store counts as down.
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)


class StorageSettings(BaseModel):
    """The storage service (issue 21): where bytes live, the scanner, and upload limits."""

    #: ``local``: files under ``local_path``; ``s3``: the store of ``s3``.
    backend: Literal["local", "s3"] = "local"
    #: ``None``: ``<data_dir>/storage``.
    local_path: Path | None = None
    s3: S3Settings = S3Settings()
    #: clamd's address (``tcp://127.0.0.1:3310`` or ``unix:///run/clamav/clamd.ctl``);
    #: ``None``: no scanner, so a bucket that requires scanning keeps uploads pending.
    clamd_address: str | None = None
    #: Seconds a scan may take before it counts as failed (and is tried again).
    scan_timeout_seconds: float = Field(default=120.0, gt=0)
    #: The largest object any bucket may allow (a bucket's policy may only lower it).
    max_object_bytes: int = Field(default=5 * 1024**3, ge=1)
    #: The longest a presigned URL or POST form may live.
    max_presign_seconds: int = Field(default=7 * 86_400, ge=60)
    #: Hours an incomplete multipart upload is kept before its parts are deleted.
    multipart_expiry_hours: int = Field(default=24, ge=1)
    #: Minutes between lifecycle sweeps (expiry, pruning, expired uploads) of each tenant.
    lifecycle_interval_minutes: float = Field(default=60.0, gt=0)
    #: Hours a blob no version or part names is kept before the lifecycle sweep deletes it
    #: as an orphan: longer than any write takes, since a version's row is written only once
    #: its bytes are (S3 dates a blob written in parts from the start of its upload).
    orphan_grace_hours: float = Field(default=24.0, ge=0)

    def local_root(self, data_dir: Path) -> Path:
        return self.local_path or data_dir / "storage"


class Settings(BaseSettings):
    """The effective configuration of one Keel process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    environment: str = "development"
    data_dir: Path = Path(".keel")
    database_url: SecretStr = SecretStr("")
    database_pool: DatabasePoolSettings = DatabasePoolSettings()
    redis_url: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    services: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(KNOWN_SERVICES))
    log_level: str = "info"
    log_format: LogFormat = LogFormat.auto
    #: Largest request body any endpoint accepts; larger ones get 413.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: Largest request head: the target and every header name and value together (a JWT
    #: bearer token is 1-8 KiB); a larger one gets 431 before it is read any further.
    max_header_bytes: int = Field(default=32_768, ge=4096, le=1_048_576)
    #: The proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed: IPs and
    #: networks, comma-separated (``10.0.0.0/8,192.0.2.7``), or ``*`` for any peer. Empty (the
    #: default): the client is the peer of the TCP connection, whatever the headers say.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Seconds each readiness check may take before it counts as failed.
    health_check_timeout_seconds: float = Field(default=2.0, gt=0)
    #: Base64 of 32 random bytes: wraps every key and secret stored at rest.
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    #: Older master keys still accepted for opening values (a rotation in progress): base64
    #: keys separated by commas, or a file of them, one a line. Never used to seal.
    master_key_previous: SecretStr | None = None
    master_key_previous_file: Path | None = None
    #: The URL services reach Keel at (issuer of tokens, links in e-mails).
    public_url: str | None = None
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    changes: ChangeStreamSettings = ChangeStreamSettings()
    secrets: SecretsSettings = SecretsSettings()
    jobs: JobsSettings = JobsSettings()
    notify: NotifySettings = NotifySettings()
    storage: StorageSettings = StorageSettings()
    gateway: GatewaySettings = GatewaySettings()
    sentry: SentrySettings = SentrySettings()
    otel: OtelSettings = OtelSettings()

    @model_validator(mode="after")
    def _one_master_key(self) -> Settings:
        """Fold the ``KEEL_SECRETS__`` aliases into the platform's master key settings."""
        for name in ("master_key", "master_key_file"):
            alias = getattr(self.secrets, name)
            if alias is None:
                continue
            value = getattr(self, name)
            if value is None:
                setattr(self, name, alias)
            elif _plain(value) != _plain(alias):
                variable = f"{ENV_PREFIX}{name.upper()}"
                raise ValueError(
                    f"{variable} and {ENV_PREFIX}SECRETS{NESTED_DELIMITER}{name.upper()} are "
                    f"both set and differ; one master key serves every service, set one of them"
                )
        return self

    @model_validator(mode="after")
    def _shared_limits_for_many_proxies(self) -> Settings:
        """Proxies sharing one port count their rate limits together, in Redis."""
        if self.gateway.proxy_reuse_port and self.redis_url is None:
            raise ValueError(
                f"{ENV_PREFIX}GATEWAY{NESTED_DELIMITER}PROXY_REUSE_PORT needs "
                f"{ENV_PREFIX}REDIS_URL: proxies in several processes share rate limits only "
                "through Redis"
            )
        return self

    @field_validator("services", mode="before")
    @classmethod
    def _split_services(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in KNOWN_SERVICES]
        if unknown:
            raise ValueError(f"unknown service {unknown[0]!r}; known: {', '.join(KNOWN_SERVICES)}")
        return list(dict.fromkeys(value))

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_forwarded_allow_ips(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        if value == ["*"]:
            return value
        proxies = []
        for item in value:
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8); "
                    "'*' alone trusts every peer"
                ) from None
            # uvicorn silently ignores what it cannot parse: hand it canonical forms only.
            single = network.prefixlen == network.max_prefixlen
            proxies.append(str(network.network_address) if single else str(network))
        return list(dict.fromkeys(proxies))

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw:
            return value
        try:
            url = make_url(raw)
        except ArgumentError:
            raise ValueError("is not a database URL") from None
        if url.get_backend_name() == "postgres":  # the scheme Heroku and others hand out
            url = url.set(drivername="postgresql")
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError("must be a sqlite or postgresql URL")
        # Accept the plain forms people paste and pick the async drivers ourselves.
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "asyncpg":
            url = url.set(drivername="postgresql+asyncpg")
        if url.get_backend_name() == "sqlite" and url.get_driver_name() != "aiosqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        return SecretStr(url.render_as_string(hide_password=False))

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one or SQLite under ``data_dir``."""
        configured = self.database_url.get_secret_value()
        if configured:
            return configured
        return f"sqlite+aiosqlite:///{self.data_dir / 'keel.db'}"

    @property
    def is_embedded(self) -> bool:
        """True on the embedded default (SQLite), where Keel migrates by itself."""
        return self.effective_database_url.startswith("sqlite")

    def masked(self) -> dict[str, Any]:
        """The effective settings with every secret masked, for ``keel doctor``."""
        data = self.model_dump(mode="json")
        data["database_url"] = mask_url(self.effective_database_url)
        data["redis_url"] = mask_url(self.redis_url.get_secret_value()) if self.redis_url else None
        for name in ("master_key", "master_key_previous"):
            if getattr(self, name) is not None:
                data[name] = "**********"
        if self.secrets.master_key is not None:
            data["secrets"]["master_key"] = "**********"
        if self.sentry.dsn is not None:
            data["sentry"]["dsn"] = "**********"
        return data


def _plain(value: SecretStr | Path) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def mask_url(raw: str) -> str:
    """Render a URL with its password (and a DSN's user part) replaced by stars."""
    try:
        return make_url(raw).render_as_string(hide_password=True)
    except ArgumentError:
        return "**********"


class SettingsError(Exception):
    """Settings could not be loaded; the message names each offending variable."""


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment, naming the variable of every invalid value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a check across variables: its message names them
            problems.append(message)
            continue
        variable = ENV_PREFIX + NESTED_DELIMITER.join(str(part) for part in error["loc"]).upper()
        problems.append(f"{variable}: {message}")
    return "invalid settings: " + "; ".join(problems)

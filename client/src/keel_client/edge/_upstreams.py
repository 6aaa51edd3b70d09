"""Wire models of the gateway's upstream side: pools, health checks, breaker, timeouts, retries.

A route names an :class:`UpstreamPool`; the proxy (``keel.gateway.proxy``) turns each pool into
a runtime that balances requests over its targets, ejects failing ones (passive checks),
probes them (active checks) and opens a circuit breaker per target. The models are frozen and
refuse unknown fields, so a typo in a policy is an error naming the field rather than a setting
silently ignored::

    pool = UpstreamPool(
        name="orders",
        targets=[UpstreamTarget(url="http://10.0.0.5:8080"), UpstreamTarget(url="http://10.0.0.6:8080")],
        balance="least_inflight",
        health=ActiveHealthCheck(path="/health/ready"),
    )
"""

from __future__ import annotations

import re
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "IDEMPOTENT_METHODS",
    "REPLAYABLE_BODY_BYTES",
    "ActiveHealthCheck",
    "BalanceStrategy",
    "CircuitBreakerPolicy",
    "PassiveHealthCheck",
    "RetryCondition",
    "RetryPolicy",
    "Timeouts",
    "UpstreamPool",
    "UpstreamTarget",
]

BalanceStrategy = Literal["round_robin", "least_inflight", "consistent_hash"]
RetryCondition = Literal["connect_error", "timeout", "502", "503", "504"]

#: Methods RFC 9110 §9.2.2 calls idempotent: the only ones a retry may send twice.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: A request body up to this size is buffered before it is sent, so a retry can replay it;
#: a larger one streams and is never retried once its first byte went upstream.
REPLAYABLE_BODY_BYTES: Final = 64 * 1024

_DEFAULT_RETRY_ON: Final[tuple[RetryCondition, ...]] = ("connect_error", "502", "503", "504")
_POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_HASH_ON = re.compile(
    r"^(?:ip|principal|path|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|cookie:[^\s;=,]+)$"
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamTarget(_Model):
    """One server of a pool: ``http(s)://host[:port][/base/path]`` and its balancing weight.

    The base path is prefixed to every upstream path (``http://api:8080/v2`` + ``/orders`` →
    ``/v2/orders``)."""

    url: str
    weight: int = Field(default=1, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url or any(character.isspace() for character in url):
            raise ValueError("must be a URL without whitespace")
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number in 0…65535
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:password@)")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise ValueError("must not have a query or a fragment")
        if port == 0:
            raise ValueError("port must be 1…65535")
        return url


class ActiveHealthCheck(_Model):
    """A ``GET <path>`` sent to each target every ``interval_seconds``: a target that fails
    ``unhealthy_threshold`` probes in a row is out until it passes ``healthy_threshold`` in a
    row. ``expected_status`` lists the healthy answers; ``None`` means any 2xx or 3xx."""

    path: str = Field(default="/health", pattern=r"^/[^\s#]*$", max_length=2048)
    interval_seconds: float = Field(default=5, ge=0.1, le=3600)
    timeout_seconds: float = Field(default=2, ge=0.05, le=60)
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=2, ge=1, le=100)
    expected_status: list[int] | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("expected_status")
    @classmethod
    def _check_statuses(cls, statuses: list[int] | None) -> list[int] | None:
        if statuses is not None and any(not 100 <= status <= 599 for status in statuses):
            raise ValueError("every status must be 100…599")
        return statuses

    def is_healthy_status(self, status: int) -> bool:
        if self.expected_status is None:
            return 200 <= status <= 399
        return status in self.expected_status


class PassiveHealthCheck(_Model):
    """Ejects a target for ``ejection_seconds`` after ``consecutive_failures`` failed requests
    in a row (a connect error, a timeout, or a 502/503/504 from the target)."""

    consecutive_failures: int = Field(default=3, ge=1, le=1000)
    ejection_seconds: float = Field(default=10, ge=0.1, le=3600)


class CircuitBreakerPolicy(_Model):
    """Opens a target's breaker when, over the last ``window_seconds``, at least
    ``minimum_requests`` were sent and ``failure_ratio`` of them failed. After
    ``open_seconds`` the breaker is half-open: one probe request goes through; its success
    closes the breaker, its failure opens it again."""

    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    minimum_requests: int = Field(default=20, ge=1, le=1_000_000)
    window_seconds: float = Field(default=10, ge=1, le=3600)
    open_seconds: float = Field(default=5, ge=0.1, le=3600)


class UpstreamPool(_Model):
    """A named set of targets and how requests are spread over them.

    ``hash_on`` (only with ``balance="consistent_hash"``) picks the key: the client's ``ip``,
    the verified ``principal``, the request ``path``, ``header:<Name>`` or ``cookie:<name>``."""

    name: str
    targets: list[UpstreamTarget] = Field(min_length=1, max_length=256)
    balance: BalanceStrategy = "round_robin"
    hash_on: str = "ip"
    health: ActiveHealthCheck | None = None
    passive: PassiveHealthCheck = PassiveHealthCheck()
    breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    max_connections_per_target: int = Field(default=512, ge=1, le=100_000)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _POOL_NAME.fullmatch(name):
            raise ValueError("must be 1-64 of a-z 0-9 _ . - starting with a letter or digit")
        return name

    @field_validator("targets")
    @classmethod
    def _check_unique_targets(cls, targets: list[UpstreamTarget]) -> list[UpstreamTarget]:
        seen: set[str] = set()
        for target in targets:
            key = target.url.rstrip("/").lower()
            if key in seen:
                raise ValueError(f"lists {target.url} twice")
            seen.add(key)
        return targets

    @field_validator("hash_on")
    @classmethod
    def _check_hash_on(cls, hash_on: str, info: ValidationInfo) -> str:
        if not _HASH_ON.fullmatch(hash_on):
            raise ValueError("must be ip, principal, path, header:<Name> or cookie:<name>")
        # ``balance`` is declared first, so it is validated (and in ``info.data``) by now.
        if hash_on != "ip" and info.data.get("balance", "round_robin") != "consistent_hash":
            raise ValueError("applies only with balance='consistent_hash'")
        return hash_on


class Timeouts(_Model):
    """Limits on one upstream attempt: connecting, waiting for the response (to its first
    byte and then between body chunks), and writing the request."""

    connect_seconds: float = Field(default=5, gt=0, le=600)
    read_seconds: float = Field(default=60, gt=0, le=86_400)
    write_seconds: float = Field(default=60, gt=0, le=86_400)


class RetryPolicy(_Model):
    """Extra attempts (``attempts`` after the first) on another target for the failures in
    ``on``. Only idempotent methods are retried, only while the body can be replayed (none,
    or ≤ 64 KiB and buffered), and within a budget: over the last 10 s, retries stay under
    ``budget_ratio * requests + min_per_second * 10`` (Linkerd's retry budget), so a
    failing upstream does not receive a retry storm."""

    attempts: int = Field(default=2, ge=0, le=5)
    on: list[RetryCondition] = Field(default_factory=lambda: list(_DEFAULT_RETRY_ON), max_length=5)
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_second: int = Field(default=10, ge=0, le=100_000)

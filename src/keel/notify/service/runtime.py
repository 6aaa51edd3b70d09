"""What delivery keeps in a process, and the names the rest of the service shares with it,
without importing delivery: ``keel serve`` imports the service's routes at every start, and
delivery brings Jinja, DKIM, MIME and the providers' HTTP and SMTP clients, which a process
needs only once it delivers (:mod:`keel.core.lazy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel.core.context import PlatformTask, ResourceKey
from keel.core.logging import get_logger

if TYPE_CHECKING:
    import httpx

    from keel_client.edge._ratelimit import LimiterStore, RateLimit

log = get_logger(__name__)

#: The change stream of new inbox items (subject: the recipient's row id).
INBOX_STREAM = "notify-inbox"
#: The sender of email (``From``, DKIM) until templates choose theirs.
DEFAULT_SENDER = "default"

#: The ``notify.deliver`` task: a job per message, or per chunk of a batch; its handler is
#: :func:`keel.notify.service.delivery.deliver_messages`, imported when a job first runs.
DELIVER = PlatformTask(
    "notify",
    "deliver",
    "keel.notify.service.delivery:deliver_messages",
    max_attempts=5,
    timeout_seconds=600,
)


@dataclass
class ProviderChain:
    """A tenant's providers of one channel, built with their credentials, and the limits
    of those that have one (``rate_per_second`` of their settings, by provider name)."""

    signature: tuple[tuple[str, int], ...]
    read_at: float
    providers: list[Any]
    rates: dict[str, int] = field(default_factory=dict)


def provider_rate_rule(rate_per_second: int) -> RateLimit:
    """A provider's limit as the limiter's rule: a token bucket of one second's share, so a
    burst takes ``rate_per_second`` at once and the rest flows at that rate."""
    from keel_client.edge._ratelimit import RateLimit

    return RateLimit(
        name="provider",
        algorithm="token_bucket",
        limit=rate_per_second,
        period_seconds=1,
        key="route",
    )


def _new_http_client() -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))


@dataclass
class NotifyRuntime:
    """What delivery keeps between jobs in one process: one HTTP client for every HTTP
    provider (made at the first delivery), and each tenant's providers (with their
    credentials) for a short while."""

    chains: dict[tuple[str, str], ProviderChain] = field(default_factory=dict)
    dkim_keys: dict[tuple[str, str], tuple[float, bytes]] = field(default_factory=dict)
    #: Counts deliveries against providers' ``rate_per_second``: see :meth:`use_limiter`.
    limiter: LimiterStore | None = None
    _limiter_redis: Any = None
    _http: httpx.AsyncClient | None = None

    def use_limiter(self, redis_url: str | None) -> None:
        """Count providers' ``rate_per_second`` in Redis when Keel has one, so every
        replica's deliveries share a provider's limit; else in this process (the embedded
        default's single process). The gateway's limiter (:mod:`keel_client.edge`), not one
        of notify's own."""
        from keel_client.edge._ratelimit import MemoryLimiterStore, RedisLimiterStore

        if redis_url is None:
            self.limiter = MemoryLimiterStore()
            return
        import redis.asyncio as redis  # only when configured: it costs start-up time
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Short timeouts and no client-side retries: while Redis is down the rule fails open
        # at once (a provider's own 429 answers still defer the message through failover).
        self._limiter_redis = redis.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        self.limiter = RedisLimiterStore(self._limiter_redis, prefix="keel:notify:rl:")

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = _new_http_client()
        return self._http

    async def aclose(self) -> None:
        for chain in self.chains.values():
            for provider in chain.providers:
                try:
                    await provider.aclose()
                except Exception:  # closing must not stop the others closing
                    log.warning("notify.provider_close_failed", exc_info=True)
        self.chains.clear()
        if self._http is not None:
            await self._http.aclose()
        if self._limiter_redis is not None:
            await self._limiter_redis.aclose()


NOTIFY_RUNTIME: ResourceKey[NotifyRuntime] = ResourceKey("notify.runtime")

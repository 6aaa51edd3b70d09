"""Fixed-window rate limits of Keel's own endpoints (the login guard), shared by every
replica (Redis) or kept in-process: the edge's engine (:mod:`keel_client.edge._ratelimit`),
so Keel counts its own limits with the code that counts the gateway's and the services'.

``await limiter.hit(key)`` counts one event and returns ``None`` while under the limit, or the
seconds until a new attempt would be allowed once over it (for ``Retry-After``).

While Redis is down, :class:`RedisRateLimiter` counts in the process instead (fail open to a
per-process limit): the endpoints it guards keep answering, and guessing stays limited, to
the limit times the number of replicas.
"""

from __future__ import annotations

from typing import Any

from keel.core.outages import Outcome, note_outage
from keel_client.edge._ratelimit import (
    LimiterStore,
    MemoryLimiterStore,
    RateLimit,
    RateLimitDecision,
    RedisLimiterStore,
)


class RateLimiter:
    """``limit`` events per key in each clock-aligned window of ``window_seconds``, counted
    in ``store``; ``prefix`` names the limit (a rule name: lower-case letters, digits, ``-``)."""

    def __init__(
        self, *, limit: int, window_seconds: int, prefix: str, store: LimiterStore
    ) -> None:
        self.rule = RateLimit(
            name=prefix,
            algorithm="fixed_window",
            limit=limit,
            period_seconds=window_seconds,
            key="route",  # unused here: the caller's key is given to each hit
            fail="open",
        )
        self._store = store

    async def hit(self, key: str) -> float | None:
        return _wait_of(await self._store.hit(self.rule, key))

    async def aclose(self) -> None:
        """Nothing to release in-process; see :class:`RedisRateLimiter`."""


class InMemoryRateLimiter(RateLimiter):
    """Counts in this process only: right for the embedded default's single process."""

    def __init__(self, *, limit: int, window_seconds: int, prefix: str) -> None:
        super().__init__(
            limit=limit, window_seconds=window_seconds, prefix=prefix, store=MemoryLimiterStore()
        )


class RedisRateLimiter(RateLimiter):
    """Counts in Redis, so every replica enforces one shared limit.

    When Redis fails (refused, reset, or silent for ``timeout`` seconds) the count goes to
    this process's own store, and Redis is tried again after ``retry_seconds``: meanwhile no
    request waits for it.
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        window_seconds: int,
        prefix: str,
        timeout: float = 2.0,
        retry_seconds: float = 5.0,
    ) -> None:
        import redis.asyncio as redis  # only when Redis is configured: it costs start-up time
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No client retries: the fallback answers at once instead of redis-py's backoff.
        self._redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        super().__init__(
            limit=limit,
            window_seconds=window_seconds,
            prefix=prefix,
            store=RedisLimiterStore(self._redis, retry_seconds=retry_seconds, coalesce=False),
        )
        self._fallback = MemoryLimiterStore()

    async def hit(self, key: str) -> float | None:
        decision = await self._store.hit(self.rule, key)
        if decision.degraded:
            note_outage(
                "redis",
                f"rate-limit:{self.rule.name}",
                "unreachable",
                outcome=Outcome.fail_open,
            )
            decision = self._fallback.hit_now(self.rule, key)
        return _wait_of(decision)

    async def aclose(self) -> None:
        await self._redis.aclose()


def _wait_of(decision: RateLimitDecision) -> float | None:
    return None if decision.allowed else float(decision.retry_after or 1)


def create_rate_limiter(
    redis_url: str | None, *, limit: int, window_seconds: int, prefix: str
) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(
            redis_url, limit=limit, window_seconds=window_seconds, prefix=prefix
        )
    return InMemoryRateLimiter(limit=limit, window_seconds=window_seconds, prefix=prefix)

"""Fixed-window rate limits shared by every replica (Redis) or kept in-process.

``await limiter.hit(key)`` counts one event and returns ``None`` while under the limit, or the
seconds until the window resets once over it (for ``Retry-After``).

While Redis is down, :class:`RedisRateLimiter` counts in the process instead (fail open to a
per-process limit): the endpoints it guards keep answering, and guessing stays limited, to
the limit times the number of replicas.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from keel.core.outages import Outcome, describe_error, note_outage


class RateLimiter(ABC):
    def __init__(self, *, limit: int, window_seconds: int, prefix: str) -> None:
        self.limit = limit
        self.window = window_seconds
        self.prefix = prefix

    def _window(self, now: float) -> tuple[int, float]:
        index = int(now // self.window)
        return index, (index + 1) * self.window - now

    @abstractmethod
    async def hit(self, key: str) -> float | None: ...


class InMemoryRateLimiter(RateLimiter):
    """Counts in this process only: right for the embedded default's single process."""

    def __init__(self, **kwargs: int | str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str) -> float | None:
        index, remaining = self._window(time.time())
        window, count = self._counts.get(key, (index, 0))
        if window != index:
            count = 0
            if len(self._counts) > 100_000:  # forget old windows; bounded memory
                self._counts = {k: v for k, v in self._counts.items() if v[0] == index}
        count += 1
        self._counts[key] = (index, count)
        return remaining if count > self.limit else None


class RedisRateLimiter(RateLimiter):
    """Counts in Redis, so every replica enforces one shared limit.

    When Redis fails (refused, reset, or silent for ``timeout`` seconds) the count goes to an
    :class:`InMemoryRateLimiter` of this process, and Redis is tried again after
    ``retry_seconds``: meanwhile no request waits for it.
    """

    def __init__(
        self, url: str, *, timeout: float = 2.0, retry_seconds: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        import redis.asyncio as redis  # only when Redis is configured: it costs start-up time

        self._redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._failures = (redis.RedisError, OSError)  # OSError includes TimeoutError
        self._fallback = InMemoryRateLimiter(**kwargs)
        self.retry_seconds = retry_seconds
        self._redis_skipped_until = 0.0
        self._last_failure = ""

    async def hit(self, key: str) -> float | None:
        if time.monotonic() < self._redis_skipped_until:
            note_outage("redis", self._use, self._last_failure, outcome=Outcome.fail_open)
            return await self._fallback.hit(key)
        index, remaining = self._window(time.time())
        name = f"keel:rl:{self.prefix}:{key}:{index}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, self.window + 1)
                count, _ = await pipe.execute()
        except self._failures as error:
            self._redis_skipped_until = time.monotonic() + self.retry_seconds
            self._last_failure = describe_error(error)
            note_outage("redis", self._use, error, outcome=Outcome.fail_open)
            return await self._fallback.hit(key)
        return remaining if int(count) > self.limit else None

    @property
    def _use(self) -> str:
        return f"rate-limit:{self.prefix}"

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_rate_limiter(
    redis_url: str | None, *, limit: int, window_seconds: int, prefix: str
) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(
            redis_url, limit=limit, window_seconds=window_seconds, prefix=prefix
        )
    return InMemoryRateLimiter(limit=limit, window_seconds=window_seconds, prefix=prefix)

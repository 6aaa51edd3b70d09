"""Fixed-window rate limits shared by every replica (Redis) or kept in-process.

``await limiter.hit(key)`` counts one event and returns ``None`` while under the limit, or the
seconds until the window resets once over it (for ``Retry-After``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any


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
    """Counts in Redis, so every replica enforces one shared limit."""

    def __init__(self, url: str, **kwargs: int | str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        import redis.asyncio as redis  # only when Redis is configured: it costs start-up time

        self._redis: Any = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)

    async def hit(self, key: str) -> float | None:
        index, remaining = self._window(time.time())
        name = f"keel:rl:{self.prefix}:{key}:{index}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, self.window + 1)
            count, _ = await pipe.execute()
        return remaining if int(count) > self.limit else None

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

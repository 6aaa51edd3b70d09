"""Fixed-window rate limits: in-process, and in Redis with a per-process fallback while Redis
cannot be reached (the Redis side end to end: tests/test_outages.py)."""

from __future__ import annotations

import time
import uuid

import pytest

from keel.core.ratelimit import InMemoryRateLimiter, RedisRateLimiter
from tests.support.keel_process import free_port


async def test_the_in_memory_limit_answers_the_seconds_left_once_over_it() -> None:
    limiter = InMemoryRateLimiter(limit=2, window_seconds=3600, prefix="test")
    answers = [await limiter.hit("10.0.0.1") for _ in range(3)]
    assert answers[:2] == [None, None]
    assert answers[2] is not None
    assert 0 < answers[2] <= 3600
    assert await limiter.hit("10.0.0.2") is None  # another key, its own count


async def test_with_redis_unreachable_the_limit_is_kept_in_this_process() -> None:
    limiter = RedisRateLimiter(
        f"redis://127.0.0.1:{free_port()}/0", limit=2, window_seconds=3600, prefix="test"
    )
    try:
        started = time.monotonic()
        answers = [await limiter.hit("10.0.0.1") for _ in range(3)]
        assert answers[:2] == [None, None]
        assert answers[2] is not None
        assert time.monotonic() - started < 2.0  # refused at once, then not tried again
    finally:
        await limiter.aclose()


@pytest.mark.redis
async def test_two_replicas_on_one_redis_share_one_count(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    replicas = [
        RedisRateLimiter(redis_url, limit=3, window_seconds=3600, prefix=prefix) for _ in range(2)
    ]
    try:
        answers = [await replicas[index % 2].hit("10.0.0.1") for index in range(4)]
        assert answers[:3] == [None, None, None]
        assert answers[3] is not None  # the fourth, on either replica, is over the one limit
    finally:
        for replica in replicas:
            await replica.aclose()

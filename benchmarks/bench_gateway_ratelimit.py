"""Edge rate-limit decisions per second on one Redis (issue 20): Keel's ``RedisLimiterStore``
against the ``limits`` library and against a bare ``PING``.

- ``gateway.ratelimit.<algorithm>_per_s``: decisions/s of our store, ``CONCURRENCY``
  coroutines making ``DECISIONS`` decisions in all, over ``KEYS`` client keys (an address
  each) under one rule that allows them all (the common path). Peers, like for like:
  ``fixed_window`` against ``limits``' ``FixedWindowRateLimiter``, ``sliding_window`` (Kong's
  weighted two windows) against its ``SlidingWindowCounterRateLimiter`` (the same weighted
  form; its ``MovingWindowRateLimiter``, a log of every hit, is reported in ``extra``).
  ``limits`` has no token bucket: ``token_bucket`` is compared with ``PING`` only. Target:
  ratio at least 1.2.
- ``gateway.ratelimit.<algorithm>_vs_ping``: the same figure against a bare ``PING`` loop on
  the same client, the one-round-trip limit every decision needs. Target: at least 0.9.

Our store coalesces: decisions asked for while a round trip is under way share the next
one (a pipeline of ``EVALSHA``), which is how it passes the per-request ``PING`` (each
decision still waits one round trip; the batch saves redis-py's per-command send and parse).
``extra.uncoalesced_per_s`` and ``extra.uncoalesced_ratio`` are the same store with
``coalesce=False``, one ``EVALSHA`` per call like ``limits``, for the like-for-like view.

Both libraries use redis-py's asyncio client (``limits`` with ``implementation="redispy"``)
with a pool of ``CONCURRENCY`` connections to the same server, and each runs its own Lua
script by ``EVALSHA``, one round trip a decision. Runs rotate through the systems ``ROUNDS``
times and each figure is the median, so drift on a shared machine meets all of them alike.

``python -m benchmarks gateway_ratelimit`` (Redis at ``KEEL_BENCH_REDIS_URL``, by default
``redis://127.0.0.1:6379``; its keys go to database ``REDIS_DB`` under prefixes of this run,
deleted at the end).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from benchmarks._figures import Figure, emit, machine
from keel_client.edge._ratelimit import Algorithm, RateLimit, RedisLimiterStore

REDIS_URL = os.environ.get("KEEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = 13
CONCURRENCY = 50
DECISIONS = 20_000
WARMUP_DECISIONS = 2_000
KEYS = 1_000
ROUNDS = 5
#: Far above what a run makes per key a minute: every decision is an allowed one.
LIMIT_PER_MINUTE = 1_000_000
TARGET_LIMITS_RATIO = 1.2
TARGET_PING_RATIO = 0.9

Decide = Callable[[str], Awaitable[Any]]


async def drive(decide: Decide, decisions: int) -> float:
    """Decisions per second of ``CONCURRENCY`` coroutines making ``decisions`` in all."""
    keys = [f"198.51.100.{index}" for index in range(KEYS)]
    remaining = decisions

    async def worker(offset: int) -> None:
        nonlocal remaining
        index = offset
        while remaining > 0:
            remaining -= 1
            index += 1
            await decide(keys[index % KEYS])

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(worker(offset * 37) for offset in range(CONCURRENCY)))
    return decisions / (time.perf_counter() - started)


def our_decide(store: RedisLimiterStore, rule: RateLimit) -> Decide:
    async def decide(key: str) -> Any:
        decision = await store.hit(rule, key)
        if not decision.allowed or decision.degraded:
            raise RuntimeError(f"unexpected decision {decision}")
        return decision

    return decide


def limits_decide(limiter: Any, namespace: str) -> Decide:
    """``limits`` keys by item and identifiers alone: each strategy gets its own namespace,
    as its keys hold different Redis types."""
    item = RateLimitItemPerMinute(LIMIT_PER_MINUTE)

    async def decide(key: str) -> Any:
        if not await limiter.hit(item, namespace, key):
            raise RuntimeError("limits refused a decision")
        return True

    return decide


def ping_decide(client: redis.Redis) -> Decide:
    async def decide(key: str) -> Any:
        return await client.ping()

    return decide


async def measure(systems: dict[str, Decide]) -> dict[str, list[float]]:
    for decide in systems.values():
        await drive(decide, WARMUP_DECISIONS)
    rates: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for round_index in range(ROUNDS):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(await drive(systems[name], DECISIONS))
    return rates


async def delete_keys(client: redis.Redis, *patterns: str) -> None:
    for pattern in patterns:
        keys = [key async for key in client.scan_iter(pattern, count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])


async def main() -> list[Figure]:
    url = f"{REDIS_URL.rstrip('/')}/{REDIS_DB}"
    run = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(url, max_connections=CONCURRENCY)
    ours = RedisLimiterStore(client, prefix=f"keel:bench:{run}:")
    single = RedisLimiterStore(client, prefix=f"keel:bench:{run}:single:", coalesce=False)
    storage = RedisStorage(
        f"async+{url}",
        implementation="redispy",
        key_prefix=f"keel-bench-limits-{run}",
        max_connections=CONCURRENCY,
    )

    def rule(algorithm: Algorithm) -> RateLimit:
        return RateLimit(
            name="bench",
            algorithm=algorithm,
            limit=LIMIT_PER_MINUTE,
            period_seconds=60,
        )

    systems: dict[str, Decide] = {
        "ping": ping_decide(client),
        "fixed_window": our_decide(ours, rule("fixed_window")),
        "sliding_window": our_decide(ours, rule("sliding_window")),
        "token_bucket": our_decide(ours, rule("token_bucket")),
        "fixed_window_single": our_decide(single, rule("fixed_window")),
        "sliding_window_single": our_decide(single, rule("sliding_window")),
        "token_bucket_single": our_decide(single, rule("token_bucket")),
        "limits_fixed_window": limits_decide(FixedWindowRateLimiter(storage), "fixed"),
        "limits_sliding_window_counter": limits_decide(
            SlidingWindowCounterRateLimiter(storage), "counter"
        ),
        "limits_moving_window": limits_decide(MovingWindowRateLimiter(storage), "moving"),
    }
    try:
        rates = await measure(systems)
    finally:
        await delete_keys(client, f"keel:bench:{run}:*", f"keel-bench-limits-{run}*")
        await client.aclose()
    return figures({name: statistics.median(values) for name, values in rates.items()})


def figures(rate: dict[str, float]) -> list[Figure]:
    common = {
        "concurrency": CONCURRENCY,
        "decisions_per_run": DECISIONS,
        "keys": KEYS,
        "rounds": ROUNDS,
        "machine": machine(),
    }
    peers = {
        "fixed_window": ("limits_fixed_window", "limits FixedWindowRateLimiter (redispy)"),
        "sliding_window": (
            "limits_sliding_window_counter",
            "limits SlidingWindowCounterRateLimiter (redispy)",
        ),
    }
    out: list[Figure] = []
    for algorithm in ("fixed_window", "sliding_window", "token_bucket"):
        value = rate[algorithm]
        uncoalesced = rate[f"{algorithm}_single"]
        if algorithm in peers:
            peer, label = peers[algorithm]
            extra = {
                **common,
                "peer_value": round(rate[peer], 1),
                "target_ratio": TARGET_LIMITS_RATIO,
                "uncoalesced_per_s": round(uncoalesced, 1),
                "uncoalesced_ratio": round(uncoalesced / rate[peer], 3),
            }
            if algorithm == "sliding_window":
                extra["limits_moving_window_per_s"] = round(rate["limits_moving_window"], 1)
            out.append(
                emit(
                    Figure(
                        name=f"gateway.ratelimit.{algorithm}_per_s",
                        value=round(value, 1),
                        unit="decisions/s",
                        peer=label,
                        ratio=round(value / rate[peer], 3),
                        extra=extra,
                    )
                )
            )
        out.append(
            emit(
                Figure(
                    name=f"gateway.ratelimit.{algorithm}_vs_ping",
                    value=round(value, 1),
                    unit="decisions/s",
                    peer="redis-py PING (same client)",
                    ratio=round(value / rate["ping"], 3),
                    extra={
                        **common,
                        "peer_value": round(rate["ping"], 1),
                        "target_ratio": TARGET_PING_RATIO,
                        "uncoalesced_per_s": round(uncoalesced, 1),
                        "uncoalesced_ratio": round(uncoalesced / rate["ping"], 3),
                    },
                )
            )
        )
    return out


if __name__ == "__main__":
    asyncio.run(main())

"""Two processes share one limit of 100 exactly, through Redis.

Each process is a separate Python (its own connection pool and event loop) making 150 hits
on the same key and rule, 25 at a time, both started on one signal. Together they are
allowed exactly 100, whichever process wins each race: the count is decided atomically in
Redis by one script per hit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid

import pytest
import redis.asyncio as redis

from keel_client.edge._ratelimit import RateLimit

HITS_PER_PROCESS = 150
PROCESSES = 2

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as redis
    from keel_client.edge._ratelimit import RateLimit, RedisLimiterStore

    async def main(url, prefix, key, rule_json, hits):
        client = redis.Redis.from_url(url, max_connections=25)
        store = RedisLimiterStore(client, prefix=prefix)
        rule = RateLimit.model_validate_json(rule_json)
        await client.ping()  # connected before the start signal
        print("ready", flush=True)
        sys.stdin.readline()
        allowed = 0
        for start in range(0, hits, 25):
            batch = [store.hit(rule, key) for _ in range(min(25, hits - start))]
            decisions = await asyncio.gather(*batch)
            if any(decision.degraded for decision in decisions):
                raise SystemExit("Redis was unreachable")
            allowed += sum(decision.allowed for decision in decisions)
        print(allowed, flush=True)
        await client.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    """
)


async def _seconds_left_in_window(url: str, period: int) -> float:
    client = redis.Redis.from_url(url)
    try:
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    return period - (seconds + micros / 1_000_000) % period


def _run_processes(url: str, prefix: str, rule: RateLimit) -> list[int]:
    key = f"203.0.113.{uuid.uuid4().int % 250}"
    command = [sys.executable, "-c", WORKER, url, prefix, key, rule.model_dump_json()]
    workers = [
        subprocess.Popen(
            [*command, str(HITS_PER_PROCESS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:  # both go at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        counts = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            counts.append(int(out.strip()))
        return counts
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


@pytest.mark.parametrize(
    "rule",
    [
        RateLimit(name="fixed", algorithm="fixed_window", limit=100, period_seconds=60),
        RateLimit(name="sliding", algorithm="sliding_window", limit=100, period_seconds=60),
        # A burst of 100 refilled at 100 an hour: no token comes back during the run, so
        # the burst alone is shared (at 100 a minute, one would every 0.6 s).
        RateLimit(
            name="bucket", algorithm="token_bucket", limit=100, period_seconds=3600, burst=100
        ),
    ],
    ids=lambda rule: rule.algorithm,
)
async def test_two_processes_share_one_limit_of_100_exactly(
    redis_url: str, rule: RateLimit
) -> None:
    prefix = f"keel:test:rl2p:{uuid.uuid4().hex[:12]}:"
    if rule.algorithm != "token_bucket":
        # A window boundary during the run would open a second quota (the sliding window's
        # weighs the first in, but not to exactly 100): start in a fresh stretch of window.
        left = await _seconds_left_in_window(redis_url, rule.period_seconds)
        if left < 20:
            await asyncio.sleep(left + 0.05)
    counts = await asyncio.to_thread(_run_processes, redis_url, prefix, rule)
    assert sum(counts) == 100
    assert len(counts) == PROCESSES
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        assert len(keys) == 1  # one shared count, not one per process
        await client.delete(*keys)
    finally:
        await client.aclose()

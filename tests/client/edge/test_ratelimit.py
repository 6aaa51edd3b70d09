"""The edge rate limiter: rules, algorithms, both stores, outages and response fields.

Every algorithm runs against both stores (``store`` is parametrised): the in-process one and
Redis (the ``redis_url`` fixture skips, or fails in CI, without it). Each Redis test counts
under a prefix of its own, so parallel workers never share a key. Timing-dependent checks
assert bounds that hold on a loaded machine, never exact figures of elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keel_client.edge._ratelimit import (
    MemoryLimiterStore,
    RateLimit,
    RateLimitDecision,
    RedisLimiterStore,
    combine,
    rate_limit_headers,
    redis_key,
)


def rule(**fields: Any) -> RateLimit:
    return RateLimit(**{"name": "api", "limit": 5, "period_seconds": 60, **fields})


def new_key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_store(redis_client: redis.Redis) -> AsyncIterator[RedisLimiterStore]:
    prefix = f"keel:test:rl:{uuid.uuid4().hex[:12]}:"
    yield RedisLimiterStore(redis_client, prefix=prefix)
    keys = [key async for key in redis_client.scan_iter(f"{prefix}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> MemoryLimiterStore | RedisLimiterStore:
    if request.param == "memory":
        return MemoryLimiterStore()
    store: RedisLimiterStore = request.getfixturevalue("redis_store")
    return store


async def hits(
    store: MemoryLimiterStore | RedisLimiterStore, rule: RateLimit, key: str, count: int
) -> list[RateLimitDecision]:
    return [await store.hit(rule, key) for _ in range(count)]


def allowed(decisions: list[RateLimitDecision]) -> int:
    return sum(decision.allowed for decision in decisions)


class TestRules:
    def test_defaults_are_a_sliding_window_per_ip_failing_open(self) -> None:
        limit = rule()
        assert (limit.algorithm, limit.key, limit.fail, limit.burst) == (
            "sliding_window",
            "ip",
            "open",
            None,
        )
        assert limit.capacity == 5

    def test_header_key_is_kept_lower_cased(self) -> None:
        limit = rule(key="header:X-Tenant-ID")
        assert limit.key == "header:x-tenant-id"
        assert limit.header_name == "x-tenant-id"

    def test_token_bucket_burst_is_its_capacity(self) -> None:
        assert rule(algorithm="token_bucket", burst=20).capacity == 20
        assert rule(algorithm="token_bucket").capacity == 5

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"name": "Bad Name"}, "name"),
            ({"name": "x" * 33}, "name"),
            ({"algorithm": "leaky_bucket"}, "algorithm"),
            ({"limit": 0}, "limit"),
            ({"limit": 1_000_000_001}, "limit"),
            ({"period_seconds": 0}, "period_seconds"),
            ({"period_seconds": 31_536_001}, "period_seconds"),
            ({"limit": 20_000_000, "period_seconds": 1}, "limit"),
            ({"burst": 10}, "burst"),
            ({"algorithm": "fixed_window", "burst": 10}, "burst"),
            ({"algorithm": "token_bucket", "burst": 0}, "burst"),
            ({"key": "cookie"}, "key"),
            ({"key": "header:"}, "key"),
            ({"key": "header:X Bad"}, "key"),
            ({"key": "header:" + "a" * 65}, "key"),
            ({"fail": "maybe"}, "fail"),
            ({"unknown": 1}, "unknown"),
        ],
    )
    def test_bad_rule_is_refused_naming_the_field(self, fields: dict[str, Any], field: str) -> None:
        with pytest.raises(ValidationError) as caught:
            rule(**fields)
        assert [error["loc"] for error in caught.value.errors()] == [(field,)]

    def test_slowest_and_fastest_plausible_rates_are_accepted(self) -> None:
        assert rule(limit=1, period_seconds=31_536_000).limit == 1
        assert rule(limit=10_000_000, period_seconds=1).limit == 10_000_000

    def test_rule_is_frozen(self) -> None:
        with pytest.raises(ValidationError):
            rule().limit = 6  # type: ignore[misc]


class TestFixedWindow:
    async def test_allows_exactly_the_limit_then_refuses_with_retry_after(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        fixed = rule(algorithm="fixed_window", limit=5, period_seconds=3600)
        decisions = await hits(store, fixed, new_key(), 8)
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        refused = decisions[5]
        assert refused.retry_after is not None
        assert 1 <= refused.retry_after <= 3600
        assert refused.remaining == 0
        assert not refused.degraded

    async def test_keys_and_rules_count_apart(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        fixed = rule(algorithm="fixed_window", limit=2, period_seconds=3600)
        other = rule(name="other", algorithm="fixed_window", limit=2, period_seconds=3600)
        first, second = new_key(), new_key()
        assert allowed(await hits(store, fixed, first, 3)) == 2
        assert allowed(await hits(store, fixed, second, 3)) == 2
        assert allowed(await hits(store, other, first, 3)) == 2

    async def test_cost_counts_several_units(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        fixed = rule(algorithm="fixed_window", limit=5, period_seconds=3600)
        key = new_key()
        assert (await store.hit(fixed, key, cost=4)).remaining == 1
        refused = await store.hit(fixed, key, cost=2)
        assert not refused.allowed
        assert refused.remaining == 1
        assert (await store.hit(fixed, key, cost=1)).allowed

    async def test_a_new_window_starts_a_new_count(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        fixed = rule(algorithm="fixed_window", limit=3, period_seconds=1)
        key = new_key()
        first = await hits(store, fixed, key, 4)
        assert not first[-1].allowed
        await asyncio.sleep(first[-1].retry_after or 1)
        assert (await store.hit(fixed, key)).allowed


class TestSlidingWindow:
    async def test_the_previous_window_still_counts_by_its_remaining_share(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        # 10 per 2 s. A full previous window weighs 10 * (2 - e) / 2 at e seconds into the
        # next, leaving room for 5 * e: a fixed window would allow all 10 again at once.
        period = 2.0
        clock = time.monotonic if isinstance(store, MemoryLimiterStore) else time.time
        sliding = rule(algorithm="sliding_window", limit=10, period_seconds=int(period))
        key = new_key()
        await asyncio.sleep(period - clock() % period + 0.01)  # a window's start
        assert allowed(await hits(store, sliding, key, 11)) == 10
        window = clock() // period
        await asyncio.sleep(period - clock() % period + 0.01)  # the next window's start
        early = allowed(await hits(store, sliding, key, 10))
        early_end = clock() - (window + 1) * period
        await asyncio.sleep(max(0.0, 1.2 - (clock() - (window + 1) * period)))
        later_start = clock() - (window + 1) * period
        later = allowed(await hits(store, sliding, key, 10))
        later_end = clock() - (window + 1) * period
        if later_end >= period:
            pytest.skip("the machine stalled past the window under test")
        assert early <= 5 * early_end + 1
        assert early < 10
        # Room grows as the previous window's share fades: by 1.2 s about 6 in all.
        assert 5 * later_start - 1 <= early + later <= 5 * later_end + 1

    async def test_weighted_count_is_previous_share_plus_current(self) -> None:
        # Pure arithmetic, no clock: the form Kong uses.
        from keel_client.edge._ratelimit import _sliding_window_step

        period = 1_000_000
        # 8 hits in window 4, now a quarter into window 5: 8 * 0.75 = 6 weigh; limit 10.
        state = (4, 8, 0)
        now = 5 * period + period // 4
        state_after, outcome = _sliding_window_step(state, now, period, limit=10, cost=1)
        assert outcome[0] is True
        assert outcome[1] == 3
        assert state_after == (5, 1, 8)
        state_after, outcome = _sliding_window_step((5, 4, 8), now, period, limit=10, cost=1)
        assert outcome[0] is False
        assert outcome[1] == 0
        # Room for one once 8 * share <= 5: share 0.625, at 0.375 of the window: 0.125 from now.
        assert outcome[3] == period // 8

    async def test_refusal_says_when_the_share_has_faded(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        sliding = rule(algorithm="sliding_window", limit=4, period_seconds=60)
        decisions = await hits(store, sliding, new_key(), 5)
        refused = decisions[-1]
        assert not refused.allowed
        # Only this window's hits count: room comes back in the next window, within 2 periods.
        assert refused.retry_after is not None
        assert 1 <= refused.retry_after <= 120


class TestTokenBucket:
    async def test_allows_its_burst_then_its_rate(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        # A bucket of 10 refilled at 5 a second.
        bucket = rule(algorithm="token_bucket", limit=5, period_seconds=1, burst=10)
        key = new_key()
        started = time.monotonic()
        burst = await hits(store, bucket, key, 11)
        burst_took = time.monotonic() - started
        assert [d.allowed for d in burst[:10]] == [True] * 10
        if burst_took < 0.2:  # no token came back during the burst: the 11th is refused
            assert not burst[10].allowed
            assert burst[10].retry_after == 1
        await asyncio.sleep(1.0)
        rate_started = time.monotonic() - started
        rate = allowed(await hits(store, bucket, key, 10))
        ended = time.monotonic() - started
        # About 5 more after 1 s: the tokens refilled since the start, within one either way.
        total = allowed(burst) + rate
        assert 10 + 5 * rate_started - 1 <= total <= 10 + 5 * ended + 1
        assert 4 <= rate < 10 or ended > 1.8

    async def test_refusal_waits_one_interval(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        bucket = rule(algorithm="token_bucket", limit=1, period_seconds=10, burst=2)
        decisions = await hits(store, bucket, new_key(), 3)
        assert [d.allowed for d in decisions] == [True, True, False]
        assert decisions[-1].retry_after is not None
        assert 9 <= decisions[-1].retry_after <= 10
        assert decisions[-1].reset_seconds == 20  # both tokens back


class TestStoresAgree:
    @pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
    async def test_memory_and_redis_decide_alike(
        self, redis_store: RedisLimiterStore, algorithm: str
    ) -> None:
        limit = rule(algorithm=algorithm, limit=7, period_seconds=3600)
        key = new_key()
        memory = await hits(MemoryLimiterStore(), limit, key, 10)
        shared = await hits(redis_store, limit, key, 10)
        assert [(d.allowed, d.remaining) for d in memory] == [
            (d.allowed, d.remaining) for d in shared
        ]

    async def test_hit_many_counts_each_rule_in_one_call(
        self, store: MemoryLimiterStore | RedisLimiterStore
    ) -> None:
        rules = [
            rule(name="second", algorithm="fixed_window", limit=2, period_seconds=3600),
            rule(name="hour", algorithm="sliding_window", limit=3, period_seconds=3600),
            rule(name="bucket", algorithm="token_bucket", limit=1, period_seconds=3600, burst=4),
        ]
        key = new_key()
        rounds = [await store.hit_many([(r, key) for r in rules]) for _ in range(3)]
        assert [[d.allowed for d in decisions] for decisions in rounds] == [
            [True, True, True],
            [True, True, True],
            [False, True, True],
        ]
        assert [d.rule.name for d in rounds[0]] == ["second", "hour", "bucket"]
        assert not combine(rounds[2]).allowed


class TestRedisCoalescing:
    @pytest.mark.parametrize("coalesce", [True, False])
    async def test_concurrent_hits_are_counted_exactly(
        self, redis_store: RedisLimiterStore, coalesce: bool
    ) -> None:
        redis_store.coalesce = coalesce
        limit = rule(algorithm="fixed_window", limit=40, period_seconds=3600)
        key = new_key()
        decisions = await asyncio.gather(*(redis_store.hit(limit, key) for _ in range(100)))
        assert allowed(list(decisions)) == 40
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(40))

    async def test_a_caller_that_gives_up_does_not_stop_the_others(
        self, redis_store: RedisLimiterStore
    ) -> None:
        limit = rule(algorithm="fixed_window", limit=10, period_seconds=3600)
        key = new_key()
        tasks = [asyncio.ensure_future(redis_store.hit(limit, key)) for _ in range(6)]
        tasks[0].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(isinstance(r, RateLimitDecision) and r.allowed for r in results[1:])


class TestMemoryBounds:
    async def test_key_count_stays_under_its_cap(self) -> None:
        store = MemoryLimiterStore(max_keys=100)
        limit = rule(algorithm="fixed_window", limit=1, period_seconds=3600)
        for index in range(1000):
            await store.hit(limit, f"client-{index}")
        assert len(store) <= 100
        # The newest keys are still counted: their second hit is refused.
        assert not (await store.hit(limit, "client-999")).allowed

    async def test_expired_keys_are_swept_first(self) -> None:
        store = MemoryLimiterStore(max_keys=10)
        short = rule(algorithm="fixed_window", limit=1, period_seconds=1)
        long = rule(name="long", algorithm="fixed_window", limit=1, period_seconds=3600)
        await store.hit(long, "kept")
        for index in range(9):
            await store.hit(short, f"brief-{index}")
        await asyncio.sleep(1.05)
        await store.hit(short, "new")
        assert len(store) == 2
        assert not (await store.hit(long, "kept")).allowed


class TestRedisKeys:
    HOSTILE = ["*", "\n", "{}", "a}{b", "x" * 10_000, "key\r\nFLUSHALL\r\n", "\x00", "é€😀"]

    def test_hostile_values_make_short_distinct_keys(self) -> None:
        limit = rule()
        keys = {redis_key("keel:rl:", limit, value) for value in self.HOSTILE}
        assert len(keys) == len(self.HOSTILE)
        for key in keys:
            assert len(key) <= len("keel:rl:") + 32 + 1 + 34
            assert key.isprintable()
            assert key.isascii()
            assert "*" not in key
            assert key.count("{") == 1
            assert key.count("}") == 1

    def test_rule_identity_is_part_of_the_key(self) -> None:
        keys = {
            redis_key("p:", rule(), "1.2.3.4"),
            redis_key("p:", rule(name="other"), "1.2.3.4"),
            redis_key("p:", rule(period_seconds=61), "1.2.3.4"),
            redis_key("p:", rule(algorithm="fixed_window"), "1.2.3.4"),
        }
        assert len(keys) == 4

    async def test_hostile_values_count_apart_in_redis(
        self, redis_store: RedisLimiterStore, redis_client: redis.Redis
    ) -> None:
        limit = rule(algorithm="fixed_window", limit=1, period_seconds=60)
        for value in self.HOSTILE:
            assert (await redis_store.hit(limit, value)).allowed
        stored = [key async for key in redis_client.scan_iter(f"{redis_store.prefix}*")]
        assert len(stored) == len(self.HOSTILE)
        assert max(len(key) for key in stored) < 100
        ttl = await redis_client.pttl(stored[0])
        assert 0 < ttl <= 61_000

    async def test_the_script_is_loaded_again_after_a_flush(
        self, redis_store: RedisLimiterStore, redis_client: redis.Redis
    ) -> None:
        limit = rule(algorithm="token_bucket", limit=3, period_seconds=60)
        key = new_key()
        assert (await redis_store.hit(limit, key)).allowed
        await redis_client.script_flush()
        assert (await redis_store.hit(limit, key)).remaining == 1
        await redis_client.script_flush()
        decisions = await redis_store.hit_many([(limit, key), (rule(name="b"), key)])
        assert [d.allowed for d in decisions] == [True, True]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestRedisUnreachable:
    @pytest.fixture
    async def unreachable(self) -> AsyncIterator[RedisLimiterStore]:
        client = redis.Redis(
            host="127.0.0.1",
            port=closed_port(),
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),  # as the store's docstring advises
        )
        yield RedisLimiterStore(client, retry_seconds=60)
        await client.aclose()

    async def test_fail_open_allows_and_says_degraded(self, unreachable: RedisLimiterStore) -> None:
        decision = await unreachable.hit(rule(fail="open"), "1.2.3.4")
        assert decision.allowed
        assert decision.degraded
        assert decision.retry_after is None

    async def test_fail_closed_refuses_for_a_second(self, unreachable: RedisLimiterStore) -> None:
        decision = await unreachable.hit(rule(fail="closed"), "1.2.3.4")
        assert not decision.allowed
        assert decision.degraded
        assert decision.retry_after == 1

    async def test_each_rule_of_a_request_fails_its_own_way(
        self, unreachable: RedisLimiterStore
    ) -> None:
        decisions = await unreachable.hit_many(
            [(rule(name="open", fail="open"), "k"), (rule(name="shut", fail="closed"), "k")]
        )
        assert [(d.allowed, d.degraded) for d in decisions] == [(True, True), (False, True)]
        combined = combine(decisions)
        assert combined.rule.name == "shut"
        assert combined.degraded

    async def test_one_warning_per_outage_without_the_key(
        self, unreachable: RedisLimiterStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger="keel_client.edge"):
            for _ in range(5):
                await unreachable.hit(rule(), "secret-client-value")
            unreachable._skip_until = 0.0  # as if retry_seconds had passed
            await unreachable.hit(rule(), "secret-client-value")
        warnings = [r for r in caplog.records if r.name == "keel_client.edge"]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert "secret-client-value" not in caplog.text

    async def test_the_outage_is_not_retried_on_every_request(
        self, unreachable: RedisLimiterStore
    ) -> None:
        await unreachable.hit(rule(), "k")
        started = time.monotonic()
        for _ in range(50):
            assert (await unreachable.hit(rule(), "k")).degraded
        # Skipped, not 50 refused connections: this is a count of attempts, not a timing.
        assert unreachable._skip_until > started


def decision(name: str, **fields: Any) -> RateLimitDecision:
    values: dict[str, Any] = {
        "allowed": True,
        "remaining": 45,
        "reset_seconds": 30,
        "retry_after": None,
        "degraded": False,
    }
    values.update(fields)
    return RateLimitDecision(rule=rule(name=name, limit=100, period_seconds=60), **values)


class TestCombine:
    def test_allowed_decisions_give_the_fewest_remaining(self) -> None:
        combined = combine([decision("a", remaining=9), decision("b", remaining=3)])
        assert combined.allowed
        assert combined.rule.name == "b"

    def test_any_refusal_refuses_with_the_longest_wait(self) -> None:
        combined = combine(
            [
                decision("a", remaining=0),
                decision("b", allowed=False, remaining=0, retry_after=5),
                decision("c", allowed=False, remaining=0, retry_after=20),
            ]
        )
        assert not combined.allowed
        assert combined.rule.name == "c"

    def test_degraded_is_carried(self) -> None:
        combined = combine([decision("a", remaining=1), decision("b", degraded=True)])
        assert combined.rule.name == "a"
        assert combined.degraded

    def test_nothing_to_combine_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            combine([])


class TestHeaders:
    def test_allowed_request_fields_exact_bytes(self) -> None:
        assert rate_limit_headers([decision("api")]) == [
            (b"ratelimit-policy", b'"api";q=100;w=60'),
            (b"ratelimit", b'"api";r=45;t=30'),
        ]

    def test_several_rules_and_a_refusal(self) -> None:
        bucket = RateLimitDecision(
            allowed=False,
            rule=RateLimit(
                name="burst", algorithm="token_bucket", limit=10, period_seconds=1, burst=50
            ),
            remaining=0,
            reset_seconds=5,
            retry_after=1,
        )
        headers = rate_limit_headers([decision("daily", remaining=900, reset_seconds=80), bucket])
        assert headers == [
            (b"ratelimit-policy", b'"daily";q=100;w=60, "burst";q=10;w=1;keel-burst=50'),
            (b"ratelimit", b'"daily";r=900;t=80, "burst";r=0;t=1'),
            (b"retry-after", b"1"),
        ]

    def test_degraded_rule_has_a_policy_but_no_count(self) -> None:
        headers = rate_limit_headers(
            [decision("api", degraded=True), decision("other", remaining=2)]
        )
        assert headers == [
            (b"ratelimit-policy", b'"api";q=100;w=60, "other";q=100;w=60'),
            (b"ratelimit", b'"other";r=2;t=30'),
        ]

    def test_fail_closed_outage_answers_retry_after_one(self) -> None:
        shut = decision("api", allowed=False, remaining=0, retry_after=1, degraded=True)
        assert rate_limit_headers([shut]) == [
            (b"ratelimit-policy", b'"api";q=100;w=60'),
            (b"retry-after", b"1"),
        ]

    def test_no_rules_no_fields(self) -> None:
        assert rate_limit_headers([]) == []

    async def test_headers_of_a_real_refusal(self) -> None:
        store = MemoryLimiterStore()
        fixed = rule(algorithm="fixed_window", limit=1, period_seconds=60)
        await store.hit(fixed, "k")
        refused = await store.hit(fixed, "k")
        headers = dict(rate_limit_headers([refused]))
        wait = refused.retry_after
        assert wait is not None
        assert headers[b"retry-after"] == str(wait).encode()
        assert headers[b"ratelimit"] == f'"api";r=0;t={wait}'.encode()

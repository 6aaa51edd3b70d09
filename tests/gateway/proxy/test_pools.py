"""A pool of real upstreams behind the proxy: balancing, ejection of a killed target, active
health checks, the circuit breaker, and retries within their budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

import httpx
from starlette.types import Receive, Scope, Send

from keel.gateway.proxy.health import BreakerState
from keel_client.edge._upstreams import (
    ActiveHealthCheck,
    CircuitBreakerPolicy,
    PassiveHealthCheck,
    RetryPolicy,
    UpstreamTarget,
)
from tests.support.keel_process import free_port

from .servers import ProxyLog, RawUpstream, pool_of, proxied, respond, serve

#: Passive ejection and the breaker out of the way, for tests about something else.
NEVER_EJECT = PassiveHealthCheck(consecutive_failures=1000)
NEVER_BREAK = CircuitBreakerPolicy(minimum_requests=1_000_000)


class NamedUpstream:
    """An upstream answering its name; ``/slow`` waits until ``release`` is set; ``/health``
    and every other path answer ``status`` (200 unless a test changes it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.health_status = 200
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/health":
            status = self.health_status
        else:
            self.requests += 1
            status = self.status
        if scope["path"] == "/slow":
            self.slow_started.set()
            await asyncio.wait_for(self.release.wait(), 10)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": self.name.encode()})


async def _wait_until(condition: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_round_robin_follows_the_weights() -> None:
    a, b = NamedUpstream("a"), NamedUpstream("b")
    async with serve(a) as url_a, serve(b) as url_b:
        pool = pool_of(UpstreamTarget(url=url_a, weight=3), UpstreamTarget(url=url_b, weight=1))
        async with proxied(pool) as (url, _), httpx.AsyncClient() as client:
            names = [(await client.get(url + "/")).text for _ in range(40)]
    assert Counter(names) == {"a": 30, "b": 10}
    assert names[:4].count("b") == 1  # spread out, not a burst of a's then b's


async def test_least_inflight_prefers_the_idle_target() -> None:
    a, b = NamedUpstream("a"), NamedUpstream("b")
    async with serve(a) as url_a, serve(b) as url_b:
        pool = pool_of(url_a, url_b, balance="least_inflight")
        async with proxied(pool) as (url, _), httpx.AsyncClient() as client:
            slow = asyncio.create_task(client.get(url + "/slow"))
            await _wait_until(lambda: a.slow_started.is_set() or b.slow_started.is_set())
            busy, idle = (a, b) if a.slow_started.is_set() else (b, a)
            names = [(await client.get(url + "/fast")).text for _ in range(10)]
            busy.release.set()
            assert (await slow).text == busy.name
    assert names == [idle.name] * 10


async def test_consistent_hash_keeps_a_key_on_one_target() -> None:
    a, b, c = NamedUpstream("a"), NamedUpstream("b"), NamedUpstream("c")
    async with serve(a) as url_a, serve(b) as url_b, serve(c) as url_c:
        pool = pool_of(url_a, url_b, url_c, balance="consistent_hash", hash_on="header:X-User")

        def user(scope: Scope) -> str | None:
            return dict(scope["headers"]).get(b"x-user", b"").decode() or None

        async with proxied(pool, hash_key=user) as (url, _), httpx.AsyncClient() as client:
            by_user = {
                name: {
                    (await client.get(url + "/", headers={"x-user": name})).text for _ in range(5)
                }
                for name in (f"user-{n}" for n in range(20))
            }
    assert all(len(targets) == 1 for targets in by_user.values())
    assert len(set().union(*by_user.values())) > 1  # the users are spread


async def test_an_upstream_killed_mid_run_is_ejected_and_traffic_continues() -> None:
    a, b = NamedUpstream("a"), NamedUpstream("b")
    log = ProxyLog()
    async with contextlib.AsyncExitStack() as upstream_a, serve(b) as url_b:
        url_a = await upstream_a.enter_async_context(serve(a))
        pool = pool_of(url_a, url_b, passive=PassiveHealthCheck(consecutive_failures=2))
        async with proxied(pool, log=log) as (url, runtime), httpx.AsyncClient() as client:
            statuses: list[int] = []
            names: list[str] = []
            stop_at: list[int] = []  # set once the kill is done: 40 more requests after it

            async def keep_sending() -> None:
                while not stop_at or len(statuses) < stop_at[0]:
                    response = await client.get(url + "/")
                    statuses.append(response.status_code)
                    names.append(response.text)

            sender = asyncio.create_task(keep_sending())
            await _wait_until(lambda: len(statuses) >= 20)
            await upstream_a.aclose()  # kill a while requests keep coming
            killed_at = len(statuses)
            stop_at.append(killed_at + 40)
            await sender
            assert runtime.targets[0].passive.is_ejected(runtime.clock())
    assert statuses == [200] * len(statuses)  # GETs retried on the other target: no client failure
    assert set(names[:killed_at]) == {"a", "b"}
    assert set(names[killed_at + 5 :]) == {"b"}
    assert any(result.attempts == 2 for result in log.results)


async def test_active_check_ejects_an_unhealthy_target_and_readmits_it() -> None:
    a, b = NamedUpstream("a"), NamedUpstream("b")
    check = ActiveHealthCheck(
        interval_seconds=0.1, timeout_seconds=1, healthy_threshold=2, unhealthy_threshold=2
    )
    async with (
        serve(a) as url_a,
        serve(b) as url_b,
        proxied(pool_of(url_a, url_b, health=check)) as (url, runtime),
        httpx.AsyncClient() as client,
    ):
        target_a = runtime.targets[0]
        assert target_a.active is not None
        a.health_status = 500
        await _wait_until(lambda: not target_a.active.is_healthy)  # type: ignore[union-attr]
        while_out = {(await client.get(url + "/")).text for _ in range(10)}
        a.health_status = 200
        await _wait_until(lambda: target_a.active.is_healthy)  # type: ignore[union-attr]
        after = [(await client.get(url + "/")).text for _ in range(10)]
    assert while_out == {"b"}
    assert Counter(after) == {"a": 5, "b": 5}


async def test_breaker_opens_after_the_failure_ratio_and_a_probe_closes_it() -> None:
    upstream = NamedUpstream("a")
    breaker = CircuitBreakerPolicy(
        failure_ratio=0.5, minimum_requests=4, window_seconds=10, open_seconds=0.3
    )
    async with serve(upstream) as upstream_url:
        pool = pool_of(upstream_url, passive=NEVER_EJECT, breaker=breaker)
        async with (
            proxied(pool, retries=RetryPolicy(attempts=0)) as (url, runtime),
            httpx.AsyncClient() as client,
        ):
            upstream.status = 503
            relayed = [(await client.get(url + "/")).status_code for _ in range(4)]
            refused = await client.get(url + "/")
            upstream.status = 200
            await asyncio.sleep(0.4)  # open_seconds over: half-open
            probe = await client.get(url + "/")
            after = await client.get(url + "/")
            state = runtime.targets[0].breaker.state
    assert relayed == [503] * 4  # the upstream's own answers, relayed
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:keel:problem:upstream-unavailable"
    assert upstream.requests == 6  # the refused request never reached it
    assert (probe.status_code, after.status_code) == (200, 200)
    assert state is BreakerState.CLOSED


async def test_get_is_retried_on_connect_error() -> None:
    live = NamedUpstream("live")
    dead = f"http://127.0.0.1:{free_port()}"
    log = ProxyLog()
    async with serve(live) as live_url:
        pool = pool_of(dead, live_url, passive=NEVER_EJECT, breaker=NEVER_BREAK)
        async with proxied(pool, log=log) as (url, _), httpx.AsyncClient() as client:
            responses = [await client.get(url + "/") for _ in range(10)]
    assert [r.text for r in responses] == ["live"] * 10
    assert sorted({result.attempts for result in log.results}) == [1, 2]


async def test_post_is_not_retried() -> None:
    live = NamedUpstream("live")
    dead = f"http://127.0.0.1:{free_port()}"
    log = ProxyLog()
    async with serve(live) as live_url:
        pool = pool_of(dead, live_url, passive=NEVER_EJECT, breaker=NEVER_BREAK)
        async with proxied(pool, log=log) as (url, _), httpx.AsyncClient() as client:
            statuses = [
                (await client.post(url + "/", content=b"{}")).status_code for _ in range(10)
            ]
    assert Counter(statuses) == {200: 5, 502: 5}
    assert {result.attempts for result in log.results} == {1}


async def test_retry_budget_stops_a_retry_storm() -> None:
    async with RawUpstream(respond(503, b"down")) as upstream:
        pool = pool_of(upstream.url, passive=NEVER_EJECT, breaker=NEVER_BREAK)
        retries = RetryPolicy(attempts=5, budget_ratio=0.1, min_per_second=0)
        async with proxied(pool, retries=retries) as (url, _), httpx.AsyncClient() as client:
            statuses = [(await client.get(url + "/")).status_code for _ in range(100)]
    assert statuses == [503] * 100
    # Without the budget: 100 * 6 attempts. With it: 10 % of the requests, plus rounding.
    assert 100 < len(upstream.requests) <= 111


async def test_no_available_target_is_a_503_problem() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    pool = pool_of(dead, passive=PassiveHealthCheck(consecutive_failures=1, ejection_seconds=60))
    async with proxied(pool) as (url, _), httpx.AsyncClient() as client:
        first = await client.get(url + "/")
        second = await client.get(url + "/")
    assert first.status_code == 502  # the connect error itself
    assert first.json()["type"] == "urn:keel:problem:bad-gateway"
    assert second.status_code == 503
    assert second.json()["type"] == "urn:keel:problem:upstream-unavailable"
    assert second.headers["retry-after"] == "1"

"""The flags SDK's events against a real Keel (SQLite and PostgreSQL): exposures of an
experiment flag, tracked conversions and evaluation summaries reach the server in batches;
while Keel is away the queue stays bounded (the oldest dropped and counted) and what is left
goes once it is back; closing flushes. Plus the buffer's own rules, without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from keel_client.flags import EventStats, FlagsClient
from keel_client.flags._events import EXPOSURE_DEDUP_SECONDS, MAX_EVENT_AGE, EventBuffer
from tests.client.flags.flags_sdk_support import (
    API,
    BUTTON,
    CHECKOUT,
    WORKERS,
    Environment,
    eventually,
)
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin


class RecordingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that keeps the event batches Keel accepted (202)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.batches: list[list[dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == f"{API}/events" and response.status_code == 202:
            self.batches.append(json.loads(request.content)["events"])
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def kinds(batches: list[list[dict[str, Any]]]) -> list[str]:
    return [event["kind"] for batch in batches for event in batch]


async def test_exposures_tracks_and_summaries_reach_keel_in_batches(
    client: httpx.AsyncClient, admin: TenantAdmin, environment: Environment, keel_url: str
) -> None:
    transport = RecordingTransport()
    users = [{"key": f"user-{index}"} for index in range(5)]
    flags = FlagsClient(
        environment.key, keel_url, auth=admin.api_key, persist=False, transport=transport,
        batch_size=4, flush_interval=3600,
    )  # fmt: skip
    async with flags:
        served = {}
        for user in users:
            for _ in range(3):  # repeated exposures of one context are sent once
                served[user["key"]] = flags.variation(BUTTON, user, "red")
        for _ in range(7):
            flags.variation(WORKERS, users[0], 1)
        flags.is_enabled(CHECKOUT, users[0])
        flags.variation("no-such-flag", users[0], 1)  # errors are not counted
        flags.track("purchase", users[0], 12.5)
        flags.track("purchase", users[1])
        # A full batch wakes the sender: everything goes at once, without waiting an hour,
        # in batches of at most four (5 exposures, 2 tracks, 3 summaries).
        await eventually(lambda: flags.event_stats.sent == 10)
        assert [len(batch) for batch in transport.batches] == [4, 4, 2]
        assert flags.event_stats.queued == 0
    assert all(len(batch) <= 4 for batch in transport.batches)
    sent = [event for batch in transport.batches for event in batch]
    assert kinds(transport.batches).count("exposure") == 5
    assert sorted(e["context_key"] for e in sent if e["kind"] == "exposure") == sorted(served)
    assert all(e["variation"] == served[e["context_key"]] for e in sent if e["kind"] == "exposure")
    assert [(e["event"], e.get("value")) for e in sent if e["kind"] == "track"] == [
        ("purchase", 12.5), ("purchase", None),
    ]  # fmt: skip
    summaries = {e["flag"]: e["count"] for e in sent if e["kind"] == "summary"}
    assert summaries == {BUTTON: 15, WORKERS: 7, CHECKOUT: 1}
    assert flags.event_stats == EventStats(sent=len(sent), dropped=0, queued=0)

    # Keel took them: exposures per variation, conversions, and the last evaluation time.
    results = await client.get(
        f"{API}/envs/{environment.key}/flags/{BUTTON}/results",
        params={"event": "purchase"},
        headers=environment.headers,
    )
    assert results.status_code == 200, results.text
    variations = results.json()["variations"]
    assert sum(v["exposures"] for v in variations) == 5
    assert sum(v["conversions"] for v in variations) == 2
    stale = await client.get(f"{API}/envs/{environment.key}/stale", headers=environment.headers)
    listed = {flag["key"]: flag for flag in stale.json()["flags"]}
    assert listed[WORKERS]["last_evaluated_at"] is not None


async def test_while_keel_is_away_the_queue_is_bounded_and_the_rest_goes_later(
    admin: TenantAdmin, environment: Environment, keel_url: str
) -> None:
    transport = RecordingTransport()
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        flags = FlagsClient(
            environment.key, f"http://127.0.0.1:{proxy.port}", auth=admin.api_key,
            persist=False, transport=transport, batch_size=100, flush_interval=3600,
            max_queued_events=5,
        )  # fmt: skip
        async with flags:
            await proxy.cut()
            for index in range(20):
                flags.track("click", {"key": "user-1"}, index)
            assert flags.event_stats == EventStats(sent=0, dropped=15, queued=5)
            assert await flags.flush() is False  # Keel away: they stay queued
            assert flags.event_stats.queued == 5
            await proxy.restore()
            assert await flags.flush() is True
            # The newest five, in order.
            assert [event["value"] for event in transport.batches[-1]] == [15, 16, 17, 18, 19]
            assert flags.event_stats == EventStats(sent=5, dropped=15, queued=0)


async def test_closing_flushes_what_is_queued(
    admin: TenantAdmin, environment: Environment, keel_url: str, tmp_path: Path
) -> None:
    transport = RecordingTransport()
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, persist=False, transport=transport,
        flush_interval=3600,
    ) as flags:  # fmt: skip
        flags.track("signup", {"key": "user-3"}, 1)
        assert transport.batches == []
    assert kinds(transport.batches) == ["track"]


class TestEventBuffer:
    """The buffer's rules, with a hand-driven clock."""

    def test_the_oldest_are_dropped_beyond_capacity_and_put_back_keeps_order(self) -> None:
        now = [1000.0]
        buffer = EventBuffer(capacity=3, batch_size=2, clock=lambda: now[0])
        for value in range(5):
            assert buffer.track("e", "user", value)
        assert buffer.stats() == EventStats(0, 2, 3)
        batch = buffer.take_batch()
        assert [event["value"] for event in batch] == [2, 3]
        buffer.track("e", "user", 5)
        buffer.put_back(batch)  # 2, 3 ahead of 4, 5: one too many, the oldest goes
        assert [event["value"] for event in buffer.take_batch()] == [3, 4]
        assert buffer.stats().dropped == 3

    def test_events_too_old_for_keel_are_dropped_when_sending(self) -> None:
        now = [0.0]
        buffer = EventBuffer(capacity=10, batch_size=10, clock=lambda: now[0])
        buffer.track("old", "user", None)
        now[0] = MAX_EVENT_AGE + 1
        buffer.track("new", "user", None)
        assert [event["event"] for event in buffer.take_batch()] == ["new"]
        assert buffer.stats().dropped == 1

    def test_an_exposure_is_sent_once_per_dedup_period(self) -> None:
        now = [0.0]
        buffer = EventBuffer(capacity=10, batch_size=10, clock=lambda: now[0])
        buffer.exposure("f", "on", "user-1")
        buffer.exposure("f", "on", "user-1")
        buffer.exposure("f", "off", "user-1")
        buffer.exposure("f", "on", "user-2")
        now[0] = EXPOSURE_DEDUP_SECONDS + 1
        buffer.exposure("f", "on", "user-1")
        assert len(buffer) == 4

    def test_invalid_tracks_are_refused_and_summaries_count_per_flag(self) -> None:
        buffer = EventBuffer(capacity=10, batch_size=10)
        assert not buffer.track("", "user", None)
        assert not buffer.track("x" * 201, "user", None)
        assert not buffer.track("e", "", None)
        assert not buffer.track("e", "user", float("nan"))
        assert not buffer.track("e", "user", True)
        assert len(buffer) == 0
        for _ in range(3):
            buffer.count("a")
        buffer.count("b")
        summaries = buffer.take_summaries()
        assert {s["flag"]: s["count"] for s in summaries} == {"a": 3, "b": 1}
        assert buffer.take_summaries() == []

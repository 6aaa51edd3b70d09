"""The watch stream of an environment, over real HTTP (uvicorn) behind a TCP proxy that cuts
the line, on SQLite and PostgreSQL: revisions reach watchers, other environments' do not, and
a watcher that reconnects with Last-Event-ID misses none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from keel.config.service.validation import diff_values
from keel.config.service.writes import MAX_EVENT_VALUES_BYTES, _change_event
from keel_client.changes import ServerSentEvent, SSEDecoder
from tests.support.asgi import serve_over_tcp
from tests.support.audit import audit_events
from tests.support.config_api import API, new_app, write
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin, member


@dataclass
class Watcher:
    queue: asyncio.Queue[ServerSentEvent | None]

    async def next(self, timeout: float = 5.0) -> ServerSentEvent | None:
        """The next event; ``None`` once the stream ended."""
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    async def revisions(self, count: int) -> list[int]:
        found: list[int] = []
        while len(found) < count:
            event = await self.next()
            assert event is not None, f"stream ended after {found}"
            if event.event == "config":
                found.append(event.json()["data"]["revision"])
        return found

    async def assert_quiet(self, within: float = 0.5) -> None:
        await asyncio.sleep(within)
        left = []
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if event is not None and event.event == "config":
                left.append(event.json())
        assert left == []


@asynccontextmanager
async def watching(
    base_url: str, app: str, env: str, headers: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[Watcher]:
    queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
    extra = {"Last-Event-ID": last_event_id} if last_event_id else {}

    async def pump() -> None:
        decoder = SSEDecoder()
        try:
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=30) as http,
                http.stream(
                    "GET", f"{API}/apps/{app}/envs/{env}/watch", headers={**headers, **extra}
                ) as response,
            ):
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if (event := decoder.decode(line)) is not None:
                        queue.put_nowait(event)
        except httpx.HTTPError:
            pass  # the line was cut
        queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        yield Watcher(queue)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_revisions_reach_watchers_and_a_reconnect_misses_none(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    name = await new_app(client, headers, "prod", "staging")
    async with (
        serve_over_tcp(app) as url,
        tcp_proxy("127.0.0.1", urlsplit(url).port or 0) as proxy,
    ):
        base_url = f"http://127.0.0.1:{proxy.port}"
        async with watching(base_url, name, "prod", headers) as watcher:
            ready = await watcher.next()
            assert ready is not None
            assert ready.event == "ready"
            await write(client, headers, name, "prod", {"a": 1})
            await write(client, headers, name, "staging", {"a": 1})  # not this stream's
            event = await watcher.next()
            assert event is not None
            assert event.event == "config"
            assert event.json()["subject"] == f"{name}/prod"
            # A small change set carries its values: watchers apply it without a read.
            assert event.json()["data"] == {
                "revision": 2,
                "keys": ["a"],
                "set": {"a": 1},
                "unset": [],
            }
            last_seen = event.id
            await watcher.assert_quiet()

            await proxy.cut()  # the connection is reset; revisions 3 and 4 go out meanwhile
            assert await watcher.next() is None
        refused = await write(client, headers, name, "prod", {"a": "x"}, if_match='"1"')
        assert refused.status_code == 412  # a refused write is no revision, and no event
        await write(client, headers, name, "prod", {"b": 2})
        await write(client, headers, name, "prod", {"a": 3}, ["b"])
        await write(client, headers, name, "staging", {"b": 2})
        await proxy.restore()

        async with watching(base_url, name, "prod", headers, last_event_id=last_seen) as watcher:
            assert await watcher.revisions(2) == [3, 4]
            await write(client, headers, name, "prod", {"c": 5})
            assert await watcher.revisions(1) == [5]
            await watcher.assert_quiet()

    opened = await audit_events(app, admin.tenant_id, action_prefix="config.changes.watch")
    assert len(opened) == 2


async def test_the_watch_needs_read_access_and_an_existing_environment(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    name = await new_app(client, admin.headers, "prod")
    stranger = await member(app, admin, "config:someone-else:read")
    denied = await client.get(f"{API}/apps/{name}/envs/prod/watch", headers=stranger)
    assert denied.status_code == 403
    missing = await client.get(f"{API}/apps/{name}/envs/nope/watch", headers=admin.headers)
    assert missing.status_code == 404
    bad_resume = await client.get(
        f"{API}/apps/{name}/envs/prod/watch", headers={**admin.headers, "Last-Event-ID": "abc"}
    )
    assert bad_resume.status_code == 400


def test_a_change_event_carries_the_new_values_only_up_to_its_limit() -> None:
    small = diff_values({"a": 1, "gone": 2, "same": 0}, {"a": 2, "new": [1], "same": 0})
    assert _change_event(5, small) == {
        "revision": 5,
        "keys": ["a", "gone", "new"],
        "set": {"a": 2, "new": [1]},
        "unset": ["gone"],
    }
    big = diff_values({}, {"blob": "x" * MAX_EVENT_VALUES_BYTES})
    assert _change_event(6, big) == {"revision": 6, "keys": ["blob"]}  # read the snapshot

"""Two real ``keel serve`` replicas sharing a fresh PostgreSQL database and Redis: a write
to one reaches the watchers connected to the other, and a watcher that reconnects to the
other replica resumes without missing a revision."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel_client.changes import ServerSentEvent, SSEDecoder
from tests.support.config_api import API, SERVICES
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import ADMIN_KEY, KeelServer, keel_env, keel_server

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_admin_url: str, redis_url: str
) -> Iterator[tuple[KeelServer, KeelServer, str]]:
    """Two servers on one new database and Redis, and the administrator's API key."""
    name = f"keel_cfg_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_postgres_database(postgres_admin_url, name))
    env = keel_env(KEEL_DATABASE_URL=url, KEEL_REDIS_URL=redis_url, KEEL_SERVICES=SERVICES)
    try:
        migrated = invoke_keel("migrate", cwd=tmp_path, env=env)
        assert migrated.returncode == 0, migrated.stderr
        initialised = invoke_keel("init", cwd=tmp_path, env=env)
        key = ADMIN_KEY.search(initialised.stdout)
        assert key is not None, initialised.stdout + initialised.stderr
        with keel_server(tmp_path, env) as first, keel_server(tmp_path, env) as second:
            yield first, second, key.group(1)
    finally:
        asyncio.run(drop_postgres_database(postgres_admin_url, name))


async def _events(
    base_url: str, path: str, headers: dict[str, str], queue: asyncio.Queue[ServerSentEvent]
) -> None:
    decoder = SSEDecoder()
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        http.stream("GET", path, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if (event := decoder.decode(line)) is not None:
                queue.put_nowait(event)


async def _next_config(queue: asyncio.Queue[ServerSentEvent], timeout: float) -> ServerSentEvent:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if event.event == "config":
                return event


async def test_a_write_to_one_replica_reaches_watchers_of_the_other(
    replicas: tuple[KeelServer, KeelServer, str],
) -> None:
    first, second, api_key = replicas
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as one:
        assert (await one.post(f"{API}/apps", json={"name": "billing"})).status_code == 201
        made = await one.post(f"{API}/apps/billing/envs", json={"name": "production"})
        assert made.status_code == 201
        watch = f"{API}/apps/billing/envs/production/watch"

        queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
        task = asyncio.create_task(_events(second.base_url, watch, headers, queue))
        try:
            async with asyncio.timeout(10):
                ready = await queue.get()
            assert ready.event == "ready"

            started = time.monotonic()
            written = await one.patch(
                f"{API}/apps/billing/envs/production", json={"set": {"workers": 8}}
            )
            assert written.status_code == 200, written.text
            # Well under the stream's 15 s heartbeat: Redis woke the other replica's stream.
            event = await _next_config(queue, timeout=30)
            assert time.monotonic() - started < 5
            assert event.json()["data"] == {
                "revision": 2, "keys": ["workers"], "set": {"workers": 8}, "unset": []
            }  # fmt: skip
            last_seen = event.id
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        # Disconnected: two more revisions through the first replica.
        for value in (9, 10):
            changed = await one.patch(
                f"{API}/apps/billing/envs/production", json={"set": {"workers": value}}
            )
            assert changed.status_code == 200

        resumed: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
        assert last_seen is not None
        task = asyncio.create_task(
            _events(second.base_url, watch, {**headers, "Last-Event-ID": last_seen}, resumed)
        )
        try:
            revisions = [(await _next_config(resumed, 10)).json()["data"]["revision"]]
            revisions.append((await _next_config(resumed, 10)).json()["data"]["revision"])
            assert revisions == [3, 4]
            await one.patch(f"{API}/apps/billing/envs/production", json={"set": {"workers": 11}})
            assert (await _next_config(resumed, 5)).json()["data"]["revision"] == 5
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async with httpx.AsyncClient(base_url=second.base_url, headers=headers) as two:
        snapshot = await two.get(f"{API}/apps/billing/envs/production")
        assert snapshot.json()["values"] == {"workers": 11}
        revalidated = await two.get(
            f"{API}/apps/billing/envs/production",
            headers={"If-None-Match": snapshot.headers["ETag"]},
        )
        assert revalidated.status_code == 304

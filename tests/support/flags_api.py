"""Environments, flags and their states built through the flags API, and watching an
environment's change stream over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from keel_client.changes import ServerSentEvent, SSEDecoder

API = "/flags/v1"


async def new_environment(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None = None
) -> str:
    key = key or f"env-{uuid.uuid4().hex[:8]}"
    made = await client.post(f"{API}/envs", headers=headers, json={"key": key})
    assert made.status_code == 201, made.text
    return key


async def new_flag(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None = None, **fields: Any
) -> dict[str, Any]:
    key = key or f"flag-{uuid.uuid4().hex[:8]}"
    made = await client.post(f"{API}/flags", headers=headers, json={"key": key, **fields})
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def put_state(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    env: str,
    key: str,
    state: dict[str, Any],
    *,
    if_match: str | None = None,
) -> httpx.Response:
    extra = {"If-Match": if_match} if if_match else {}
    return await client.put(
        f"{API}/envs/{env}/flags/{key}", headers={**headers, **extra}, json=state
    )


@asynccontextmanager
async def watching(
    base_url: str, env: str, headers: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[asyncio.Queue[ServerSentEvent | None]]:
    queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
    extra = {"Last-Event-ID": last_event_id} if last_event_id else {}

    async def pump() -> None:
        decoder = SSEDecoder()
        try:
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=30) as http,
                http.stream(
                    "GET", f"{API}/envs/{env}/watch", headers={**headers, **extra}
                ) as response,
            ):
                assert response.status_code == 200, await response.aread()
                async for line in response.aiter_lines():
                    if (event := decoder.decode(line)) is not None:
                        queue.put_nowait(event)
        except httpx.HTTPError:
            pass
        queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_flags_event(queue: asyncio.Queue[ServerSentEvent | None]) -> ServerSentEvent:
    while True:
        async with asyncio.timeout(5):
            event = await queue.get()
        assert event is not None, "the stream ended"
        if event.event == "flags":
            return event

"""The policy's change stream over real HTTP (uvicorn), read with the SDK's ``watch_changes``,
on SQLite and PostgreSQL: each new revision reaches a subscriber, a refused write and an
unchanged one reach nobody, another tenant's writes stay apart, and opening is audited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from keel_client.changes import Change, watch_changes
from tests.support.asgi import serve_over_tcp
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, make_tenant_admin

API = "/gateway/v1"


def document(path: str) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "orders", "targets": [{"url": "http://192.0.2.10:8080"}]}],
        "routes": [{"name": "orders", "path": path, "upstream": "orders"}],
    }


@asynccontextmanager
async def subscribed(
    base_url: str, headers: dict[str, str]
) -> AsyncIterator[asyncio.Queue[Change]]:
    """The policy's changes as they arrive; entered once the stream is open (``ready``)."""
    queue: asyncio.Queue[Change] = asyncio.Queue()
    opened = asyncio.Event()

    async def pump() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
            async for change in watch_changes(http, f"{API}/policy/watch", yield_ready=True):
                if change.is_ready:
                    opened.set()
                else:
                    queue.put_nowait(change)

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(10):
            await opened.wait()
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_change(queue: asyncio.Queue[Change]) -> Change:
    async with asyncio.timeout(10):
        return await queue.get()


async def test_each_new_revision_reaches_a_subscriber(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    other = await make_tenant_admin(app)
    async with serve_over_tcp(app) as url, subscribed(url, headers) as changes:
        first = await client.put(f"{API}/policy", headers=headers, json=document("/orders"))
        assert first.status_code == 200, first.text
        change = await next_change(changes)
        assert (change.stream, change.subject, change.data) == (
            "gateway",
            "policy",
            {"revision": 1},
        )

        # Refused, unchanged, and another tenant's: none is a change of this stream.
        stale = await client.put(
            f"{API}/policy", headers={**headers, "If-Match": '"0"'}, json=document("/x")
        )
        assert stale.status_code == 412
        same = await client.put(f"{API}/policy", headers=headers, json=document("/orders"))
        assert same.json()["created"] is False
        theirs = await client.put(f"{API}/policy", headers=other.headers, json=document("/theirs"))
        assert theirs.status_code == 200

        route = await client.put(
            f"{API}/routes/health", headers=headers, json={"path": "/health", "match": "exact"}
        )
        assert route.status_code == 200, route.text
        change = await next_change(changes)
        assert change.data == {"revision": 2}
        assert changes.empty()

    opened = await audit_events(app, admin.tenant_id, action_prefix="gateway.policy.watch")
    assert len(opened) == 1


async def test_the_watch_needs_read_access(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get(f"{API}/policy/watch")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"

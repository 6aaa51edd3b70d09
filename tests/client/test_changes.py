"""keel_client.changes: the SSE decoder against the standard's rules, and watch_changes
against a real Keel server behind a TCP proxy that cuts the line (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from keel_client.changes import Change, ServerSentEvent, SSEDecoder, watch_changes
from keel_client.http import BaseAPIClient, BearerToken, ClientError
from tests.support.asgi import serve_over_tcp
from tests.support.secrets_api import vault, write
from tests.support.tcpproxy import TcpProxy, tcp_proxy
from tests.support.tenants import TenantAdmin

CHANGES = "/secrets/v1/sys/changes"


def decode(text: str) -> tuple[list[ServerSentEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events = [event for line in text.split("\n") if (event := decoder.decode(line)) is not None]
    return events, decoder


class TestSSEDecoder:
    def test_data_lines_join_with_newlines_and_one_leading_space_is_dropped(self) -> None:
        events, _ = decode("data: first\ndata:second\ndata:  third\n\n")
        assert events == [ServerSentEvent("message", "first\nsecond\n third")]

    def test_comments_are_ignored_and_an_event_without_data_is_not_dispatched(self) -> None:
        events, _ = decode(": keepalive\n\nevent: lonely\n\n:x\ndata: y\n\n")
        assert events == [ServerSentEvent("message", "y")]

    def test_the_event_type_applies_to_one_event_and_the_id_persists(self) -> None:
        events, decoder = decode("id: 7\nevent: secrets\ndata: a\n\ndata: b\n\n")
        assert events == [
            ServerSentEvent("secrets", "a", "7"),
            ServerSentEvent("message", "b", "7"),
        ]
        assert decoder.last_event_id == "7"

    def test_an_id_with_a_null_is_ignored_and_an_empty_id_resets_it(self) -> None:
        events, _ = decode("id: 1\ndata: a\n\nid: 2\0\ndata: b\n\nid\ndata: c\n\n")
        assert [event.id for event in events] == ["1", "1", ""]

    def test_retry_takes_only_digits(self) -> None:
        _, decoder = decode("retry: 2500\n\nretry: 1e3\n\nretry: soon\n\n")
        assert decoder.retry == 2500

    def test_a_byte_order_mark_and_unknown_fields_are_ignored(self) -> None:
        events, _ = decode("\ufeffdata: x\ncolour: red\n\n")
        assert events == [ServerSentEvent("message", "x")]

    def test_an_unfinished_event_is_not_dispatched(self) -> None:
        events, _ = decode("data: half")
        assert events == []


@asynccontextmanager
async def following(
    keel: BaseAPIClient | httpx.AsyncClient, last_event_id: int | None = None
) -> AsyncIterator[asyncio.Queue[Change | BaseException]]:
    received: asyncio.Queue[Change | BaseException] = asyncio.Queue()

    async def follow() -> None:
        try:
            async for change in watch_changes(keel, CHANGES, last_event_id=last_event_id):
                received.put_nowait(change)
        except Exception as error:
            received.put_nowait(error)

    task = asyncio.create_task(follow())
    try:
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_change(received: asyncio.Queue[Change | BaseException]) -> Change:
    async with asyncio.timeout(15):
        item = await received.get()
    assert isinstance(item, Change), item
    return item


async def subscribed(app: FastAPI, before: int) -> None:
    """Wait until the broadcast has one more subscriber than ``before``."""
    for _ in range(200):
        if app.state.keel.broadcast.subscriber_count > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the stream never subscribed")


@pytest.fixture
async def proxy(app: FastAPI) -> AsyncIterator[TcpProxy]:
    async with serve_over_tcp(app) as url, tcp_proxy("127.0.0.1", urlsplit(url).port or 0) as p:
        yield p


async def test_watch_changes_reconnects_and_resumes_without_gaps_or_duplicates(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, proxy: TcpProxy
) -> None:
    key = admin.api_key
    base_url = f"http://127.0.0.1:{proxy.port}"
    before = app.state.keel.broadcast.subscriber_count
    async with (
        BaseAPIClient(base_url, auth=BearerToken(key)) as keel,
        following(keel) as received,
    ):
        await subscribed(app, before)
        await write(client, key, "a", {"v": "1"})
        first = await next_change(received)

        await proxy.cut()  # the stream's connection is reset; a, b, c go out meanwhile
        for path in ("b", "c"):
            await write(client, key, path, {"v": "1"})
        await proxy.restore()
        missed = [await next_change(received) for _ in range(2)]

        await write(client, key, "d", {"v": "1"})
        last = await next_change(received)
        await asyncio.sleep(0.5)
        assert received.empty()

    changes = [first, *missed, last]
    assert [change.subject for change in changes] == [
        "secret/a",
        "secret/b",
        "secret/c",
        "secret/d",
    ]
    assert [change.data["operation"] for change in changes] == ["write"] * 4
    ids = [change.id for change in changes]
    assert ids == sorted(set(ids))
    assert proxy.connections_accepted >= 2


async def test_a_stale_resume_point_yields_a_reset(
    client: httpx.AsyncClient, admin: TenantAdmin, proxy: TcpProxy
) -> None:
    async with (
        BaseAPIClient(f"http://127.0.0.1:{proxy.port}", auth=BearerToken(admin.api_key)) as keel,
        following(keel, last_event_id=10**15) as received,
    ):
        reset = await next_change(received)
        assert reset.is_reset
        await write(client, admin.api_key, "after-reset", {"v": "1"})
        assert (await next_change(received)).subject == "secret/after-reset"


async def test_a_refused_credential_ends_the_iteration_with_the_http_error(
    proxy: TcpProxy,
) -> None:
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{proxy.port}", headers=vault("keel_not-a-key")
        ) as http,
        following(http) as received,
    ):
        async with asyncio.timeout(15):
            error = await received.get()
    assert isinstance(error, ClientError)
    assert error.status == 403

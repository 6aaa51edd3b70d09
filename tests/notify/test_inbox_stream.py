"""The in-app inbox, live, on SQLite and PostgreSQL: a recipient's open stream hears of each
new item of theirs (its id, never its text) and of nobody else's; a reconnection with
``Last-Event-ID`` gets what it missed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.notify.conftest import Notify
from tests.support.asgi import serve_over_tcp

PUSH = {
    "default_locale": "en",
    "locales": {"en": {"push_title": "{{ title }}", "push_body": "{{ body }}"}},
    "sample_data": {"title": "Hello", "body": "World"},
}


@asynccontextmanager
async def stream(
    url: str, headers: dict[str, str], recipient: str, last_event_id: str | None = None
) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """The stream's events, parsed, on a queue as they arrive."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    extra = {"Last-Event-ID": last_event_id} if last_event_id else {}

    async def pump() -> None:
        async with (
            httpx.AsyncClient(base_url=url, headers={**headers, **extra}, timeout=60) as http,
            http.stream("GET", f"/notify/v1/recipients/{recipient}/inbox/stream") as answer,
        ):
            assert answer.status_code == 200
            event: dict[str, Any] = {}
            async for line in answer.aiter_lines():
                if not line:
                    if event:
                        await events.put(event)
                    event = {}
                elif line.startswith(("event:", "id:", "data:")):
                    name, _, value = line.partition(":")
                    event[name] = value.strip()

    task = asyncio.create_task(pump())
    try:
        yield events
    finally:
        task.cancel()


async def next_event(events: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(events.get(), timeout=10)


async def send_in_app(notify: Notify, recipient: str, title: str) -> None:
    answer = await notify.send(
        channel="in_app",
        template="push.default",
        recipient=recipient,
        data={"title": title, "body": "..."},
    )
    assert answer.status_code == 202, answer.text
    await notify.deliver()


async def test_a_recipients_stream_hears_of_their_new_items_only(notify: Notify) -> None:
    await notify.publish("push.default", PUSH)
    for recipient in ("ada", "grace"):
        answer = await notify.call("PUT", f"/recipients/{recipient}", json={"locale": "en"})
        assert answer.status_code == 201, answer.text
    app = notify.app
    async with serve_over_tcp(app) as url, stream(url, notify.headers, "ada") as events:
        ready = await next_event(events)
        assert ready["event"] == "ready"
        await send_in_app(notify, "grace", "Not yours")
        await send_in_app(notify, "ada", "Shipped")
        event = await next_event(events)
        assert event["event"] == "notify-inbox"
        item = json.loads(event["data"])["data"]["item"]
        assert "Shipped" not in event["data"]  # the item's id, never its text
        inbox = (await notify.call("GET", "/recipients/ada/inbox")).json()
        assert [entry["id"] for entry in inbox["items"]] == [item]
        assert events.empty()  # grace's item never came
        last_seen = event["id"]

    await send_in_app(notify, "ada", "While away")
    async with (
        serve_over_tcp(app) as url,
        stream(url, notify.headers, "ada", last_event_id=last_seen) as events,
    ):
        missed = await next_event(events)
        while missed["event"] == "ready":
            missed = await next_event(events)
        assert missed["event"] == "notify-inbox"
        newest = (await notify.call("GET", "/recipients/ada/inbox")).json()["items"][0]
        assert json.loads(missed["data"])["data"]["item"] == newest["id"]


async def test_an_unknown_recipients_stream_is_a_404(notify: Notify) -> None:
    answer = await notify.call("GET", "/recipients/nobody/inbox/stream")
    assert answer.status_code == 404

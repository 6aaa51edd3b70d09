"""Change streams (keel.core.changes) on SQLite and PostgreSQL: recorded with the transaction,
published after commit, replayed from Last-Event-ID in order and exactly once, tenants apart,
lost broadcast messages recovered from the table, and the retention's reset."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import select, update

from keel.core.broadcast import Broadcast, InMemoryBroadcast
from keel.core.broadcast_redis import RedisBroadcast
from keel.core.changes import (
    POLL_LOCAL_BROADCAST_SECONDS,
    ChangeEvent,
    change_channel,
    change_events,
    is_resumable,
    prune_change_events,
    record_change,
    use_change_publisher,
)
from keel.core.db import Database, utcnow
from keel.core.tenancy import bind_tenant, ensure_tenant
from keel_client.changes import ServerSentEvent, SSEDecoder
from tests.support.tcpproxy import tcp_proxy

KEEPALIVE = ServerSentEvent(event="keepalive")


async def new_tenant(database: Database) -> str:
    async with database.session() as session:
        tenant, _ = await ensure_tenant(session, f"t-{uuid.uuid4().hex[:10]}")
        return tenant.id


async def record(
    database: Database, tenant_id: str, subject: str, stream: str = "secrets", **data: Any
) -> int:
    """Record one change in a unit of work of its own; its seq."""
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        record_change(session, tenant_id, stream, subject, data or {"version": 1})
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        seq = await session.scalar(
            select(ChangeEvent.seq)
            .where(ChangeEvent.subject == subject)
            .order_by(ChangeEvent.seq.desc())
        )
        assert seq is not None
        return seq


@dataclass
class Watch:
    """The events of one stream, read by a task of their own."""

    queue: asyncio.Queue[ServerSentEvent]

    async def next(self, timeout: float = 5.0, *, keepalives: bool = False) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.queue.get()
                if keepalives or event is not KEEPALIVE:
                    return event

    async def changes(self, count: int) -> list[ServerSentEvent]:
        return [await self.next() for _ in range(count)]

    async def assert_nothing_more(self, within: float = 0.5) -> None:
        await asyncio.sleep(within)
        left = [event for event in drain(self.queue) if event is not KEEPALIVE]
        assert left == []


def drain(queue: asyncio.Queue[ServerSentEvent]) -> list[ServerSentEvent]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


@asynccontextmanager
async def watching(
    database: Database,
    broadcast: Broadcast,
    tenant_id: str,
    after: int | None,
    streams: tuple[str, ...] = ("secrets",),
    **options: Any,
) -> AsyncIterator[Watch]:
    queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
    stream = change_events(database, broadcast, tenant_id, list(streams), after, **options)

    async def pump() -> None:
        decoder = SSEDecoder()
        async for chunk in stream:
            if chunk.startswith(":"):
                queue.put_nowait(KEEPALIVE)
            for line in chunk.split("\n"):
                if (event := decoder.decode(line)) is not None:
                    queue.put_nowait(event)

    task = asyncio.create_task(pump())
    try:
        yield Watch(queue)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def publishing(database: Database) -> AsyncIterator[InMemoryBroadcast]:
    """An in-process broadcast the database's commits publish on."""
    broadcast = InMemoryBroadcast()
    undo = use_change_publisher(database.engine, broadcast)
    yield broadcast
    undo()


def subjects(events: list[ServerSentEvent]) -> list[str]:
    return [event.json()["subject"] for event in events]


async def test_a_change_is_stored_and_published_only_when_its_transaction_commits(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)

    async def record_then_fail() -> None:
        async with database.session() as session:
            bind_tenant(session, tenant_id)
            record_change(session, tenant_id, "secrets", "secret/rolled-back", {"version": 1})
            raise RuntimeError("the unit of work fails")

    async with publishing.subscribe(change_channel(tenant_id, "secrets")) as subscription:
        with pytest.raises(RuntimeError):
            await record_then_fail()
        seq = await record(database, tenant_id, "secret/apps/db", version=3, operation="write")
        published = await subscription.get(timeout=30)
    assert published.data == {
        "seq": seq,
        "stream": "secrets",
        "subject": "secret/apps/db",
        "data": {"version": 3, "operation": "write"},
    }
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        stored = list(await session.scalars(select(ChangeEvent.subject)))
    assert stored == ["secret/apps/db"]


async def test_a_change_of_another_tenant_than_the_session_is_refused(
    database: Database,
) -> None:
    tenant_id, other = await new_tenant(database), await new_tenant(database)
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        with pytest.raises(ValueError, match="tenant"):
            record_change(session, other, "secrets", "secret/x", {})
        with pytest.raises(ValueError, match="stream"):
            record_change(session, tenant_id, "Not A Stream", "secret/x", {})


async def test_resume_delivers_exactly_the_missed_events_in_order_then_live_ones(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)
    seqs = [await record(database, tenant_id, f"secret/s{n}") for n in range(5)]
    await record(database, tenant_id, "flag/other-stream", stream="flags")

    async with watching(database, publishing, tenant_id, after=seqs[1]) as watch:
        missed = await watch.changes(3)
        assert [int(event.id or 0) for event in missed] == seqs[2:]
        assert subjects(missed) == ["secret/s2", "secret/s3", "secret/s4"]
        assert {event.event for event in missed} == {"secrets"}
        live = await record(database, tenant_id, "secret/live")
        event = await watch.next()
        assert (event.id, subjects([event])) == (str(live), ["secret/live"])
        await watch.assert_nothing_more()


async def test_a_change_committed_by_another_process_reaches_a_stream_of_this_one(
    database: Database,
) -> None:
    """Without Redis each process has its own broadcast: a change another process (a CLI
    command, another worker) commits wakes nobody here, so the stream reads the table."""
    tenant_id = await new_tenant(database)
    ours = InMemoryBroadcast()  # this process's, never told of the other process's commits
    async with watching(database, ours, tenant_id, after=None) as watch:
        assert (await watch.next()).event == "ready"
        seq = await record(database, tenant_id, "secret/from-elsewhere")  # nobody publishes
        event = await watch.next(timeout=3 * POLL_LOCAL_BROADCAST_SECONDS)
        assert (event.id, subjects([event])) == (str(seq), ["secret/from-elsewhere"])


async def test_a_new_subscriber_starts_now_and_learns_its_position(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)
    before = await record(database, tenant_id, "secret/before")
    async with watching(database, publishing, tenant_id, after=None) as watch:
        ready = await watch.next()
        assert ready.event == "ready"
        assert int(ready.id or 0) >= before
        after = await record(database, tenant_id, "secret/after")
        event = await watch.next()
        assert (event.id, subjects([event])) == (str(after), ["secret/after"])
        await watch.assert_nothing_more()


async def test_a_subscriber_never_receives_another_tenants_changes(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id, other = await new_tenant(database), await new_tenant(database)
    start = await record(database, tenant_id, "secret/mine-before")
    await record(database, other, "secret/theirs-before")
    async with watching(database, publishing, tenant_id, after=start - 1) as watch:
        await record(database, other, "secret/theirs-live")
        await record(database, tenant_id, "secret/mine-live")
        assert subjects(await watch.changes(2)) == ["secret/mine-before", "secret/mine-live"]
        await watch.assert_nothing_more()


async def test_a_filter_keeps_changes_from_a_subscriber_and_replays_advance_past_them(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)
    start = await record(database, tenant_id, "secret/first")

    async def public_only(changes: Any) -> Any:
        return [change for change in changes if "/public/" in change.subject]

    async with watching(database, publishing, tenant_id, after=start, allow=public_only) as watch:
        await record(database, tenant_id, "secret/private/a")
        await record(database, tenant_id, "secret/public/b")
        assert subjects([await watch.next()]) == ["secret/public/b"]
        await watch.assert_nothing_more()


async def test_the_stream_sends_a_comment_when_idle(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)
    async with watching(database, publishing, tenant_id, None, heartbeat_seconds=0.1) as watch:
        assert (await watch.next()).event == "ready"
        assert await watch.next(keepalives=True) is KEEPALIVE


async def test_changes_published_on_one_replica_reach_a_stream_on_another(
    database: Database, redis_url: str
) -> None:
    tenant_id = await new_tenant(database)
    publisher, subscriber = RedisBroadcast(redis_url), RedisBroadcast(redis_url)
    await publisher.connect()
    await subscriber.connect()
    undo = use_change_publisher(database.engine, publisher)
    try:
        async with watching(database, subscriber, tenant_id, after=None) as watch:
            assert (await watch.next()).event == "ready"
            seqs = [await record(database, tenant_id, f"secret/r{n}") for n in range(3)]
            events = await watch.changes(3)
            assert [int(event.id or 0) for event in events] == seqs
            await watch.assert_nothing_more()
    finally:
        undo()
        await publisher.disconnect()
        await subscriber.disconnect()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


async def test_changes_lost_by_the_broadcast_are_replayed_from_the_table(
    database: Database, redis_url: str
) -> None:
    """The subscriber's Redis connection is cut while a change is published: the broadcast
    reports lost messages and the stream reads what it missed from the table."""
    tenant_id = await new_tenant(database)
    target = urlsplit(redis_url)
    publisher = RedisBroadcast(redis_url)
    await publisher.connect()
    undo = use_change_publisher(database.engine, publisher)
    async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        subscriber = RedisBroadcast(_via(redis_url, proxy.port), reconnect_delay=0.05)
        await subscriber.connect()
        try:
            async with watching(database, subscriber, tenant_id, after=None) as watch:
                assert (await watch.next()).event == "ready"
                await proxy.cut()
                missed = await record(database, tenant_id, "secret/while-cut")
                event = await watch.next(timeout=10)
                assert (event.id, subjects([event])) == (str(missed), ["secret/while-cut"])
                await proxy.restore()
                await watch.assert_nothing_more()
        finally:
            undo()
            await subscriber.disconnect()
            await publisher.disconnect()


async def _age(database: Database, seqs: list[int], days: int) -> None:
    async with database.session() as session:
        await session.execute(
            update(ChangeEvent)
            .where(ChangeEvent.seq.in_(seqs))
            .values(created_at=utcnow() - timedelta(days=days))
            .execution_options(all_tenants=True)
        )


async def test_a_resume_point_older_than_the_kept_events_gets_a_reset(
    database: Database, publishing: InMemoryBroadcast
) -> None:
    tenant_id = await new_tenant(database)
    old = [await record(database, tenant_id, f"secret/old{n}") for n in range(2)]
    kept = await record(database, tenant_id, "secret/kept")
    await _age(database, old, days=8)
    assert await prune_change_events(database, timedelta(days=7)) >= 2

    async with watching(database, publishing, tenant_id, after=old[0]) as watch:
        reset = await watch.next()
        assert reset.event == "reset"
        assert int(reset.id or 0) >= kept  # where to resume after reloading
        live = await record(database, tenant_id, "secret/after-reset")
        assert (await watch.next()).id == str(live)
    async with watching(database, publishing, tenant_id, after=old[1]) as watch:
        assert subjects(await watch.changes(2)) == ["secret/kept", "secret/after-reset"]
    async with watching(database, publishing, tenant_id, after=10**15) as watch:
        assert (await watch.next()).event == "reset"  # from another database


async def test_retention_keeps_the_newest_event(database: Database) -> None:
    tenant_id = await new_tenant(database)
    seqs = [await record(database, tenant_id, f"secret/p{n}") for n in range(3)]
    await _age(database, seqs, days=30)
    await prune_change_events(database, timedelta(days=7))
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        left = list(await session.scalars(select(ChangeEvent.seq)))
    assert left == [seqs[-1]]


@pytest.mark.parametrize(
    ("after", "lowest", "highest", "resumable"),
    [
        (0, None, None, True),
        (5, None, None, False),
        (9, 10, 20, True),
        (8, 10, 20, False),
        (20, 10, 20, True),
        (21, 10, 20, False),
    ],
)
def test_is_resumable(after: int, lowest: int | None, highest: int | None, resumable: bool) -> None:
    assert is_resumable(after, lowest, highest) is resumable


def test_the_channel_names_the_tenant_and_the_stream() -> None:
    name: Callable[[str, str], str] = change_channel
    assert name("t1", "secrets") == "changes.t1.secrets"

"""Shared caches: entries expire, changes drop them once committed, here and on other replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from keel.core.broadcast import Broadcast
from keel.core.cache import SharedCache, invalidate_after_commit, listen_for_invalidations
from keel.core.db import Database
from tests.support.broadcasts import open_broadcast

TIMEOUT = 5.0


def new_cache(ttl: float = 60.0) -> SharedCache[str, int]:
    return SharedCache[str, int](f"test.{uuid.uuid4().hex}", ttl=ttl)


@contextlib.asynccontextmanager
async def listening(broadcast: Broadcast) -> AsyncIterator[None]:
    task = asyncio.create_task(listen_for_invalidations(broadcast))
    await asyncio.sleep(0.2)  # subscribed (Redis answers the SUBSCRIBE)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually_missing(cache: SharedCache[str, int], key: str) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if cache.get(key) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key!r} still cached after {TIMEOUT} s")


def test_an_entry_expires_after_its_ttl() -> None:
    cache = new_cache(ttl=0.05)
    cache.put("a", 1, cache.stamp())
    assert cache.get("a") == 1
    time.sleep(0.06)
    assert cache.get("a") is None


def test_a_hit_past_half_its_ttl_asks_for_one_refresh() -> None:
    cache = new_cache(ttl=0.2)
    cache.put("a", 1, cache.stamp())
    assert not cache.refresh_due("a")  # young
    time.sleep(0.11)
    assert cache.refresh_due("a")
    assert not cache.refresh_due("a")  # asked for already
    cache.put("a", 2, cache.stamp())  # what the refresh read
    assert not cache.refresh_due("a")
    time.sleep(0.11)
    assert cache.refresh_due("a")  # the new entry ages in its turn
    assert not cache.refresh_due("missing")


def test_an_answer_read_before_an_invalidation_is_not_stored() -> None:
    cache = new_cache()
    stamp = cache.stamp()  # a reader starts reading the old row ...
    cache.drop("a")  # ... a change commits meanwhile ...
    cache.put("a", 1, stamp)  # ... and the reader's old answer must not be kept
    assert cache.get("a") is None
    cache.put("a", 2, cache.stamp())
    assert cache.get("a") == 2


def test_the_oldest_entries_go_beyond_the_bound() -> None:
    cache = SharedCache[str, int](f"test.{uuid.uuid4().hex}", ttl=60, max_entries=3)
    for n in range(5):
        cache.put(str(n), n, cache.stamp())
    assert [cache.get(str(n)) for n in range(5)] == [None, None, 2, 3, 4]


def test_two_caches_cannot_share_a_name() -> None:
    cache = new_cache()
    with pytest.raises(ValueError, match="exists already"):
        SharedCache[str, int](cache.name, ttl=1)


async def test_a_change_drops_the_entry_when_it_commits_not_when_it_rolls_back(
    database: Database,
) -> None:
    cache = new_cache()
    async with database.session() as session:
        await session.execute(text("SELECT 1"))
        cache.put("a", 1, cache.stamp())
        invalidate_after_commit(session, cache, "a")
        assert cache.get("a") is None  # dropped at once in this process
        cache.put("a", 1, cache.stamp())  # a reader put it back before the commit
        await session.rollback()
    assert cache.get("a") == 1  # nothing changed: nothing dropped, nothing published
    async with database.session() as session:
        await session.execute(text("SELECT 1"))
        invalidate_after_commit(session, cache, "a")
        cache.put("a", 1, cache.stamp())
        await session.commit()
    assert cache.get("a") is None


async def test_a_committed_change_reaches_another_replica(
    database: Database, broadcast_redis_url: str | None
) -> None:
    """Two processes' worth of broadcast: the change commits in one, the other drops it."""
    if broadcast_redis_url is None:
        here = there = await open_broadcast(None)
    else:
        here, there = (
            await open_broadcast(broadcast_redis_url),
            await open_broadcast(broadcast_redis_url),
        )
    cache = new_cache()
    try:
        async with listening(there):
            # The publisher is the last broadcast listened on; for Redis that is `there`,
            # and every replica receives what any replica publishes.
            cache.put("k", 7, cache.stamp())
            async with database.session() as session:
                await session.execute(text("SELECT 1"))
                invalidate_after_commit(session, cache, "k")
                cache.put("k", 7, cache.stamp())  # an in-flight read in this process
                await session.commit()
            await eventually_missing(cache, "k")
            # Another replica's message alone (this process changed nothing) drops it too.
            cache.put("k", 8, cache.stamp())
            await here.publish("keel.cache", {"cache": cache.name, "key": "k"})
            await eventually_missing(cache, "k")
    finally:
        await here.disconnect()
        if there is not here:
            await there.disconnect()

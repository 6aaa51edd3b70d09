"""A target's connection pool gives out at most ``max_connections`` slots: a request beyond
them waits for one (first come, first served) within the connect timeout, and neither a
timed-out nor a cancelled waiter keeps a slot. Real TCP connections to a local listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from keel.gateway.proxy.client import ConnectionPool, Origin, UpstreamTimeout


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # keep the connection open until the client closes it
    writer.close()


@contextlib.asynccontextmanager
async def _pool(max_connections: int) -> AsyncIterator[ConnectionPool]:
    server = await asyncio.start_server(_hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(Origin.from_url(f"http://127.0.0.1:{port}"), max_connections)
    try:
        yield pool
    finally:
        pool.close()
        server.close()


async def test_a_request_beyond_the_limit_waits_and_gets_the_released_slot() -> None:
    async with _pool(max_connections=1) as pool:
        first = await pool.acquire(5.0)
        waiting = asyncio.create_task(pool.acquire(5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        pool.release(first)
        second = await asyncio.wait_for(waiting, 5.0)
        pool.release(second)
        third = await asyncio.wait_for(pool.acquire(5.0), 1.0)  # the slot came back
        pool.release(third)


async def test_waiters_are_served_in_arrival_order() -> None:
    async with _pool(max_connections=1) as pool:
        held = await pool.acquire(5.0)
        served: list[str] = []

        async def take(name: str) -> None:
            connection = await pool.acquire(5.0)
            served.append(name)
            pool.release(connection)

        tasks = [asyncio.create_task(take(name)) for name in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        pool.release(held)
        await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
        assert served == ["a", "b", "c"]


async def test_waiting_past_the_connect_timeout_is_a_timeout_and_keeps_no_slot() -> None:
    async with _pool(max_connections=1) as pool:
        held = await pool.acquire(5.0)
        with pytest.raises(UpstreamTimeout, match="1 requests in flight"):
            await pool.acquire(0.05)
        pool.release(held)
        again = await asyncio.wait_for(pool.acquire(5.0), 1.0)
        pool.release(again)


async def test_a_cancelled_waiter_keeps_no_slot() -> None:
    async with _pool(max_connections=1) as pool:
        held = await pool.acquire(5.0)
        waiting = asyncio.create_task(pool.acquire(5.0))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        pool.release(held)
        again = await asyncio.wait_for(pool.acquire(5.0), 1.0)
        pool.release(again)


async def test_a_waiter_cancelled_after_the_handover_passes_the_slot_on() -> None:
    async with _pool(max_connections=1) as pool:
        held = await pool.acquire(5.0)
        waiting = asyncio.create_task(pool.acquire(5.0))
        await asyncio.sleep(0.05)
        pool.release(held)  # the slot is handed to ``waiting``, which has not run yet
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            connection = await waiting
            pool.release(connection)
        again = await asyncio.wait_for(pool.acquire(5.0), 1.0)
        pool.release(again)

"""Opening a broadcast on either implementation."""

from __future__ import annotations

from keel.core.broadcast import Broadcast, InMemoryBroadcast
from keel.core.broadcast_redis import RedisBroadcast


async def open_broadcast(redis_url: str | None) -> Broadcast:
    broadcast: Broadcast = (
        InMemoryBroadcast()
        if redis_url is None
        else RedisBroadcast(redis_url, reconnect_delay=0.05)
    )
    await broadcast.connect()
    return broadcast

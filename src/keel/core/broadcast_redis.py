"""The Redis implementation of :mod:`keel.core.broadcast` (``KEEL_REDIS_URL``).

While Redis is down it fails open: a subscriber subscribed meanwhile gets
:class:`~keel.core.broadcast.MessagesLost` at once (a change stream then reads its table
until Redis delivers again) and is subscribed in Redis when it returns; ``publish`` raises
within ``PUBLISH_TIMEOUT_SECONDS``, and its callers carry on (see ``keel.core.outages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from keel.core.broadcast import Broadcast, Event, encode_event
from keel.core.logging import get_logger
from keel.core.outages import Outcome, note_outage

log = get_logger("keel.core.broadcast")

#: A publish that Redis has not taken by then raises: a silent Redis must not pile up
#: the tasks that publish after each commit.
PUBLISH_TIMEOUT_SECONDS = 2.0


class RedisBroadcast(Broadcast):
    """Broadcast across replicas through Redis pub/sub on ``keel:<channel>``."""

    PREFIX = "keel:"

    def __init__(
        self, url: str, *, reconnect_delay: float = 0.5, subscribe_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=None, health_check_interval=15
        )
        # Subscribe confirmations are read (by the reader task) to know when Redis delivers.
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._confirmations: dict[str, asyncio.Event] = {}
        self._reconnect_delay = reconnect_delay
        self._subscribe_timeout = subscribe_timeout
        #: The pubsub connection failed: the reader resubscribes every channel on a new one.
        self._broken = False

    async def connect(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(), name="keel-broadcast-redis")

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await self._redis.publish(self.PREFIX + channel, encode_event(data))

    async def _on_first_subscriber(self, channel: str) -> None:
        confirmed = self._confirmations[channel] = asyncio.Event()
        try:
            await self._pubsub.subscribe(self.PREFIX + channel)
            self._subscribed.set()
            # SUBSCRIBE is only sent so far; until Redis confirms it, an event published on
            # another connection is not delivered. Callers subscribe and then read the source
            # of truth, so subscribe() must not return before delivery is in place.
            if self._reader is not None:
                await asyncio.wait_for(confirmed.wait(), self._subscribe_timeout)
        except (RedisError, OSError) as error:  # TimeoutError included
            # Fail open, as for a subscriber whose connection drops: it is told it may miss
            # events (a change stream then reads its table), and the reader subscribes the
            # channel on a new connection once Redis answers again.
            note_outage("redis", "broadcast-subscribe", error, outcome=Outcome.fail_open)
            for subscription in self._subscriptions.get(channel, ()):
                subscription._mark_lost()
            self._broken = True
            self._subscribed.set()
        finally:
            self._confirmations.pop(channel, None)

    async def _on_last_unsubscribed(self, channel: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(self.PREFIX + channel)

    async def _read_forever(self) -> None:
        while True:
            # While broken, keep retrying even though a failed resubscribe left the pubsub
            # with no channels: waiting for a new first subscriber would strand current ones.
            if not self._broken and not self._pubsub.subscribed:
                self._subscribed.clear()
                await self._subscribed.wait()
            try:
                if self._broken:
                    # Resubscribe on a fresh connection; anything sent meanwhile is gone.
                    await self._pubsub.aclose()
                    channels = [self.PREFIX + name for name in self._subscriptions]
                    if channels:
                        await self._pubsub.subscribe(*channels)
                    self._broken = False
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                if not self._broken:
                    log.warning("broadcast.redis.disconnected", error=type(exc).__name__)
                    self._mark_all_lost()
                self._broken = True
                await asyncio.sleep(self._reconnect_delay)
                continue
            if message is None or message.get("type") not in {"message", "subscribe"}:
                continue
            raw_channel = message["channel"]
            name = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
            if message["type"] == "subscribe":
                confirmed = self._confirmations.get(name.removeprefix(self.PREFIX))
                if confirmed is not None:
                    confirmed.set()
                continue
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                log.warning("broadcast.redis.undecodable", channel=name)
                continue
            self._dispatch(Event(name.removeprefix(self.PREFIX), data))

"""One interface for publishing change events to every replica.

Config, flags and signing keys publish here; SSE streams subscribe. Two implementations pass
the same tests: :class:`InMemoryBroadcast` (one process, the embedded default) and
:class:`RedisBroadcast` (``KEEL_REDIS_URL``; every replica sees every event).

Once ``subscribe()`` has returned, every event published afterwards, on any replica, is
delivered (so "subscribe, then read the current state" misses nothing). Delivery is
at-most-once. A subscriber that falls too far behind, or that was subscribed
while the Redis connection dropped, gets :class:`MessagesLost` from its next ``__anext__`` and
must resynchronise from the database (SSE streams resume from ``Last-Event-ID``); iterating
again continues with new events.

Usage::

    async with broadcast.subscribe("flags:default") as subscription:
        async for event in subscription:
            ...
    await broadcast.publish("flags:default", {"flag": "checkout", "version": 7})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from keel.core.logging import get_logger

log = get_logger(__name__)

#: Events a subscriber may have queued before it is told it lost some.
DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class Event:
    channel: str
    data: dict[str, Any]


class MessagesLost(Exception):
    """Events may have been missed; resynchronise, then keep iterating."""


@dataclass(eq=False)
class Subscription:
    """Events of one channel for one subscriber, in publish order."""

    channel: str
    queue_size: int = DEFAULT_QUEUE_SIZE
    _queue: asyncio.Queue[Event] = field(init=False)
    _lost: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)

    def _deliver(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._mark_lost()

    def _mark_lost(self) -> None:
        # Drop what is queued: the subscriber resynchronises from the source of truth anyway.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._lost = True
        self._queue.put_nowait(_LOST_MARKER)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is _LOST_MARKER:
            self._lost = False
            raise MessagesLost(self.channel)
        return event

    async def get(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (``TimeoutError`` after)."""
        return await asyncio.wait_for(self.__anext__(), timeout)


_LOST_MARKER = Event(channel="", data={})


class Broadcast(ABC):
    """Publish/subscribe of JSON objects on named channels."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once at start-up."""

    async def disconnect(self) -> None:  # noqa: B027 - optional hook
        """Close connections; called once at shutdown."""

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the broadcast cannot deliver right now (readiness check)."""

    @abstractmethod
    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        """Send ``data`` to every subscriber of ``channel`` on every replica."""

    @asynccontextmanager
    async def subscribe(
        self, channel: str, *, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> AsyncIterator[Subscription]:
        subscription = Subscription(channel, queue_size)
        first = not self._subscriptions[channel]
        self._subscriptions[channel].add(subscription)
        try:
            if first:
                await self._on_first_subscriber(channel)
            yield subscription
        finally:
            self._subscriptions[channel].discard(subscription)
            if not self._subscriptions[channel]:
                del self._subscriptions[channel]
                await self._on_last_unsubscribed(channel)

    async def _on_first_subscriber(self, channel: str) -> None:  # noqa: B027
        pass

    async def _on_last_unsubscribed(self, channel: str) -> None:  # noqa: B027
        pass

    def _dispatch(self, event: Event) -> None:
        for subscription in list(self._subscriptions.get(event.channel, ())):
            subscription._deliver(event)

    def _mark_all_lost(self) -> None:
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription._mark_lost()

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())


def _encode(data: Mapping[str, Any]) -> str:
    # Round-tripping through JSON in-process too keeps both implementations' contracts equal:
    # a publisher cannot hand subscribers a mutable object or something Redis could not carry.
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True)


class InMemoryBroadcast(Broadcast):
    """Broadcast within one process."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        self._dispatch(Event(channel, json.loads(_encode(data))))


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
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        await self._redis.publish(self.PREFIX + channel, _encode(data))

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
        finally:
            self._confirmations.pop(channel, None)

    async def _on_last_unsubscribed(self, channel: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(self.PREFIX + channel)

    async def _read_forever(self) -> None:
        broken = False
        while True:
            # While broken, keep retrying even though a failed resubscribe left the pubsub
            # with no channels: waiting for a new first subscriber would strand current ones.
            if not broken and not self._pubsub.subscribed:
                self._subscribed.clear()
                await self._subscribed.wait()
            try:
                if broken:
                    # Resubscribe on a fresh connection; anything sent meanwhile is gone.
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                    channels = [self.PREFIX + name for name in self._subscriptions]
                    if channels:
                        await self._pubsub.subscribe(*channels)
                    broken = False
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                if not broken:
                    log.warning("broadcast.redis.disconnected", error=type(exc).__name__)
                    self._mark_all_lost()
                broken = True
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


def create_broadcast(redis_url: str | None) -> Broadcast:
    return RedisBroadcast(redis_url) if redis_url else InMemoryBroadcast()

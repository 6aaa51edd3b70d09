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
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

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


def encode_event(data: Mapping[str, Any]) -> str:
    """``data`` as the JSON every broadcast carries."""
    # Round-tripping through JSON in-process too keeps both implementations' contracts equal:
    # a publisher cannot hand subscribers a mutable object or something Redis could not carry.
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True)


class InMemoryBroadcast(Broadcast):
    """Broadcast within one process."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        self._dispatch(Event(channel, json.loads(encode_event(data))))

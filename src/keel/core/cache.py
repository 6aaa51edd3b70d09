"""In-process caches of hot, rarely changing rows, dropped on every replica when they change.

A request that needs a policy's rules or whether a token was revoked would otherwise spend a
database round trip on it, every time. :class:`SharedCache` keeps the answer for ``ttl``
seconds; the code that changes the row calls :func:`invalidate_after_commit`, which, once the
change is committed, drops the entry in this process and publishes on the broadcast so every
other replica drops it too (with Redis). Where a change cannot reach a process (several
processes on one SQLite without Redis, a lost message), the entry lives at most ``ttl``.

A reader that looked the row up before a concurrent change committed must not put the old
answer back: it takes a :meth:`SharedCache.stamp` before reading, and :meth:`SharedCache.put`
ignores the answer if the cache was invalidated since.

Usage::

    POLICIES = SharedCache[tuple[str, str], list[Rule]]("secrets.policies", ttl=2.0)

    rules = POLICIES.get(key)
    if rules is None:
        stamp = POLICIES.stamp()
        rules = await load(...)
        POLICIES.put(key, rules, stamp)

    # where the policy changes, in the same unit of work:
    invalidate_after_commit(session, POLICIES, key)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from keel.core.broadcast import Broadcast, MessagesLost
from keel.core.outages import Outcome, note_outage

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: The broadcast channel of invalidations: ``{"cache": name, "key": [...]}``.
CHANNEL = "keel.cache"

_CACHES: dict[str, SharedCache[Any, Any]] = {}
_PENDING = "keel_cache_invalidations"


class SharedCache(Generic[K, V]):
    """A bounded map of answers that expire after ``ttl`` seconds or when invalidated."""

    def __init__(self, name: str, *, ttl: float, max_entries: int = 10_000) -> None:
        if name in _CACHES:
            raise ValueError(f"a cache named {name!r} exists already")
        self.name = name
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        #: Keys whose refresh was asked for (:meth:`refresh_due`) and not yet put.
        self._refreshing: set[K] = set()
        self._generation = 0
        _CACHES[name] = self

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._entries.pop(key, None)
            self._refreshing.discard(key)
            return None
        return value

    def refresh_due(self, key: K) -> bool:
        """Whether the caller of a hit on ``key`` should read its answer again now, ahead of
        its expiry: the entry has lived past half its TTL and no refresh was asked for since
        it was put. True once per entry. A cache refreshed this way in the background never
        expires under steady use, so no request waits on the read; an answer is still never
        older than the TTL (each is put after it was read)."""
        entry = self._entries.get(key)
        if entry is None or key in self._refreshing:
            return False
        if entry[0] - time.monotonic() > self.ttl / 2:
            return False
        self._refreshing.add(key)
        return True

    def stamp(self) -> int:
        """Take before reading what :meth:`put` will store."""
        return self._generation

    def put(self, key: K, value: V, stamp: int) -> None:
        self._refreshing.discard(key)
        if stamp != self._generation:
            return  # invalidated while the caller read: its answer may be the old one
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            self._refreshing.discard(evicted)

    def drop(self, key: K) -> None:
        """Forget ``key`` in this process (use :func:`invalidate_after_commit` for a change)."""
        self._generation += 1
        self._entries.pop(key, None)
        self._refreshing.discard(key)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._refreshing.clear()


def invalidate_after_commit(
    session: AsyncSession, cache: SharedCache[K, Any], key: K | None
) -> None:
    """Drop ``key`` (None: every entry) everywhere once ``session`` commits the change that
    makes it stale.

    Dropped locally at once too: a reader in this process must not keep the old answer while
    the change commits.
    """
    _drop(cache, key)
    sync_session = session.sync_session
    pending: list[tuple[SharedCache[Any, Any], Any]] = sync_session.info.setdefault(_PENDING, [])
    if not pending and not event.contains(sync_session, "after_commit", _publish_pending):
        event.listen(sync_session, "after_commit", _publish_pending)
        event.listen(sync_session, "after_rollback", _forget_pending)
    pending.append((cache, key))


def _publish_pending(sync_session: Session) -> None:
    pending = sync_session.info.pop(_PENDING, [])
    if not pending:
        return
    for cache, key in pending:
        _drop(cache, key)
    broadcast = _broadcast
    if broadcast is None:
        return
    messages = [{"cache": cache.name, "key": _wire_key(key)} for cache, key in pending]
    task = asyncio.get_running_loop().create_task(_publish(broadcast, messages))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


def _forget_pending(sync_session: Session) -> None:
    sync_session.info.pop(_PENDING, None)


_broadcast: Broadcast | None = None
_in_flight: set[asyncio.Task[None]] = set()


async def _publish(broadcast: Broadcast, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        try:
            await broadcast.publish(CHANNEL, message)
        except Exception as error:  # fail open: the TTL bounds how long others keep it
            note_outage("redis", "cache-invalidation", error, outcome=Outcome.fail_open)


def _drop(cache: SharedCache[Any, Any], key: Any) -> None:
    if key is None:
        cache.clear()
    else:
        cache.drop(key)


def _wire_key(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _local_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


async def listen_for_invalidations(broadcast: Broadcast) -> None:
    """Apply other replicas' invalidations here (runs for the life of the app)."""
    global _broadcast
    _broadcast = broadcast
    try:
        async with broadcast.subscribe(CHANNEL) as subscription:
            while True:
                try:
                    message = (await subscription.get()).data
                except MessagesLost:
                    for every in _CACHES.values():
                        every.clear()
                    continue
                named = _CACHES.get(str(message.get("cache")))
                if named is not None:
                    _drop(named, _local_key(message.get("key")))
    finally:
        if _broadcast is broadcast:
            _broadcast = None

"""The short in-memory cache of secret reads: per secret, a TTL, a bound on its size.

A secret is cached as read (the whole ``data`` object of its latest version) for ``ttl``
seconds, and handed out as a copy so a caller changing the dict it got changes nothing here.
The least recently used secret goes first when ``max_entries`` are held. ``ttl=0`` turns the
cache off.

A read that was in flight while the secret was written must not put the old value back after
the write dropped it: every invalidation bumps an epoch, and ``put`` is refused when the epoch
changed since the read began.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "CacheKey", "SecretCache"]

#: ``(mount, path)``: a secret's identity in the cache.
CacheKey = tuple[str, str]

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class _Entry:
    data: dict[str, Any]
    expires: float
    #: Every value is a scalar: a shallow copy is a full copy (the common case, and cheaper).
    is_flat: bool


class SecretCache:
    """A TTL + LRU map of ``(mount, path)`` to a secret's data, safe to share between threads.

    Example::

        cache = SecretCache(ttl=5.0, max_entries=1000)
        epoch = cache.epoch
        cache.put(("secret", "apps/db"), {"password": "…"}, epoch=epoch)
        cache.get(("secret", "apps/db"))
    """

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError("cache_ttl is 0 (no cache) or more seconds")
        if max_entries < 1:
            raise ValueError("cache_size is at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0

    @property
    def is_enabled(self) -> bool:
        return self.ttl > 0

    @property
    def epoch(self) -> int:
        """Read it before fetching; hand it to :meth:`put` with what was fetched."""
        return self._epoch

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        """A copy of the cached data, or ``None`` when absent or expired."""
        entry = self._live_entry(key)
        if entry is None:
            return None
        return dict(entry.data) if entry.is_flat else copy.deepcopy(entry.data)

    def get_value(self, key: CacheKey, name: str) -> tuple[bool, Any]:
        """One key of a cached secret: ``(True, value)``, ``(True, MISSING)`` when the secret
        has no such key, ``(False, None)`` when the secret is not cached."""
        entry = self._live_entry(key)
        if entry is None:
            return False, None
        if name not in entry.data:
            return True, MISSING
        value = entry.data[name]
        # A scalar is immutable: it can be handed out as it is.
        return True, value if isinstance(value, _SCALARS) else copy.deepcopy(value)

    def put(self, key: CacheKey, data: Mapping[str, Any], *, epoch: int) -> None:
        """Cache ``data`` unless the cache is off or something was invalidated since ``epoch``."""
        if not self.is_enabled:
            return
        stored = copy.deepcopy(dict(data))
        entry = _Entry(
            stored,
            self._clock() + self.ttl,
            all(isinstance(value, _SCALARS) for value in stored.values()),
        )
        with self._lock:
            if epoch != self._epoch:
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, key: CacheKey) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _live_entry(self, key: CacheKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        # The hit path takes no lock, nor contextlib.suppress (measured: each was a third of
        # a cached read): the OrderedDict's own operations are atomic under the GIL, and an
        # entry dropped by another thread meanwhile only means it is not moved.
        try:  # noqa: SIM105
            self._entries.move_to_end(key)
        except KeyError:
            pass
        return entry


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: ``get_value``'s answer for a cached secret without the key asked for.
MISSING: Any = _Missing()

"""Opt-in HTTP caching per RFC 9111, with the rules from hishel (2.x).

hishel decides what is fresh, what must be revalidated (``If-None-Match`` /
``If-Modified-Since``) and what may be stored; this module only supplies a default storage that
keeps entries in memory, so a client never writes a cache file into the working directory.
Pass any hishel storage (``AsyncSqliteStorage``, ``AsyncRedisStorage``...) to share a cache.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import hishel
import httpx
from hishel.httpx import AsyncCacheTransport, CacheTransport

__all__ = ["AsyncMemoryStorage", "HTTPCache", "MemoryStorage"]


@dataclass(frozen=True)
class HTTPCache:
    """Turns on RFC 9111 caching for a client.

    ``shared=False`` (the default) makes it a private cache, right for a client acting for
    one principal: responses to authorised requests may be stored. Set ``shared=True`` when
    one client serves many users. ``storage`` defaults to an in-memory LRU of
    ``max_entries`` entries, each body at most ``max_body_size`` bytes.

    Example::

        api = CatalogAPI(cache=HTTPCache())
        await api.get("/products/7")   # 200, stored
        await api.get("/products/7")   # served fresh, or revalidated with If-None-Match → 304
    """

    shared: bool = False
    max_entries: int = 1024
    max_body_size: int = 10 * 1024 * 1024
    storage: hishel.AsyncBaseStorage | hishel.BaseStorage | None = None

    def async_transport(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        storage = self.storage or AsyncMemoryStorage(
            max_entries=self.max_entries, max_body_size=self.max_body_size
        )
        if not isinstance(storage, hishel.AsyncBaseStorage):
            raise TypeError("an async client needs an async hishel storage")
        options = hishel.CacheOptions(shared=self.shared)
        return AsyncCacheTransport(next_transport=inner, storage=storage, rfc=options)

    def sync_transport(self, inner: httpx.BaseTransport) -> httpx.BaseTransport:
        storage = self.storage or MemoryStorage(
            max_entries=self.max_entries, max_body_size=self.max_body_size
        )
        if not isinstance(storage, hishel.BaseStorage):
            raise TypeError("a sync client needs a sync hishel storage")
        options = hishel.CacheOptions(shared=self.shared)
        return CacheTransport(next_transport=inner, storage=storage, rfc=options)


@dataclass
class _Stored:
    key: str
    request: hishel.Request
    status_code: int
    headers: hishel.Headers
    body: bytes
    ttl_deadline: float | None
    tti: float | None
    last_used: float


class _Entries:
    """The shared, thread-safe LRU behind both storages."""

    def __init__(self, max_entries: int, max_body_size: int) -> None:
        self.max_entries = max_entries
        self.max_body_size = max_body_size
        self._stored: OrderedDict[uuid.UUID, _Stored] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, entry_id: uuid.UUID, stored: _Stored) -> None:
        with self._lock:
            self._stored[entry_id] = stored
            while len(self._stored) > self.max_entries:
                self._stored.popitem(last=False)

    def find(self, key: str) -> list[tuple[uuid.UUID, _Stored]]:
        now = time.monotonic()
        found: list[tuple[uuid.UUID, _Stored]] = []
        with self._lock:
            for entry_id, stored in list(self._stored.items()):
                expired = (stored.ttl_deadline is not None and now >= stored.ttl_deadline) or (
                    stored.tti is not None and now >= stored.last_used + stored.tti
                )
                if expired:
                    del self._stored[entry_id]
                elif stored.key == key:
                    stored.last_used = now
                    self._stored.move_to_end(entry_id)
                    found.append((entry_id, stored))
        return found

    def update_headers(self, entry_id: uuid.UUID, headers: hishel.Headers) -> None:
        with self._lock:
            stored = self._stored.get(entry_id)
            if stored is not None:
                stored.headers = _copy_headers(headers)

    def remove(self, entry_id: uuid.UUID) -> None:
        with self._lock:
            self._stored.pop(entry_id, None)


def _copy_headers(headers: hishel.Headers) -> hishel.Headers:
    return hishel.Headers({name: headers.get_list(name) or [] for name in headers})


def _limits(
    ttl: float | None, tti: float | None, default_ttl: float | None, default_tti: float | None
) -> tuple[float | None, float | None]:
    ttl = ttl if ttl is not None else default_ttl
    tti = tti if tti is not None else default_tti
    return (time.monotonic() + ttl if ttl is not None else None), tti


class AsyncMemoryStorage(hishel.AsyncBaseStorage):
    """An in-memory hishel storage (LRU) for ``BaseAPIClient``; the default of ``HTTPCache``.

    Example::

        HTTPCache(storage=AsyncMemoryStorage(max_entries=100))
    """

    def __init__(self, *, max_entries: int = 1024, max_body_size: int = 10 * 1024 * 1024) -> None:
        super().__init__()
        self._entries = _Entries(max_entries, max_body_size)

    async def create_entry(
        self,
        request: hishel.Request,
        response: hishel.Response,
        key: str,
        *,
        ttl: float | None = None,
        tti: float | None = None,
    ) -> hishel.Entry:
        entry_id = uuid.uuid4()
        ttl_deadline, idle = _limits(ttl, tti, self.default_ttl, self.default_tti)
        source = response.stream
        assert source is None or isinstance(source, AsyncIterator)

        async def save_while_reading() -> AsyncIterator[bytes]:
            # The entry appears only once the body has been read whole (the storage contract).
            chunks: list[bytes] = []
            size = 0
            if source is not None:
                async for chunk in source:
                    size += len(chunk)
                    if size <= self._entries.max_body_size:
                        chunks.append(chunk)
                    yield chunk
            if size <= self._entries.max_body_size:
                self._entries.add(
                    entry_id,
                    _Stored(
                        key=key,
                        request=request,
                        status_code=response.status_code,
                        headers=_copy_headers(response.headers),
                        body=b"".join(chunks),
                        ttl_deadline=ttl_deadline,
                        tti=idle,
                        last_used=time.monotonic(),
                    ),
                )

        return hishel.Entry(
            id=entry_id, request=request, response=replace(response, stream=save_while_reading())
        )

    async def get_entries(self, key: str) -> list[hishel.Entry]:
        return [
            hishel.Entry(
                id=entry_id,
                request=stored.request,
                response=hishel.Response(
                    status_code=stored.status_code,
                    headers=_copy_headers(stored.headers),
                    stream=_async_body(stored.body),
                ),
            )
            for entry_id, stored in self._entries.find(key)
        ]

    async def update_headers(self, id: uuid.UUID, headers: hishel.Headers) -> None:
        self._entries.update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:
        self._entries.remove(id)


class MemoryStorage(hishel.BaseStorage):
    """The blocking twin of ``AsyncMemoryStorage``, for ``SyncBaseAPIClient``.

    Example::

        HTTPCache(storage=MemoryStorage(max_entries=100))
    """

    def __init__(self, *, max_entries: int = 1024, max_body_size: int = 10 * 1024 * 1024) -> None:
        super().__init__()
        self._entries = _Entries(max_entries, max_body_size)

    def create_entry(
        self,
        request: hishel.Request,
        response: hishel.Response,
        key: str,
        *,
        ttl: float | None = None,
        tti: float | None = None,
    ) -> hishel.Entry:
        entry_id = uuid.uuid4()
        ttl_deadline, idle = _limits(ttl, tti, self.default_ttl, self.default_tti)
        source = response.stream
        assert source is None or isinstance(source, Iterator)

        def save_while_reading() -> Iterator[bytes]:
            chunks: list[bytes] = []
            size = 0
            if source is not None:
                for chunk in source:
                    size += len(chunk)
                    if size <= self._entries.max_body_size:
                        chunks.append(chunk)
                    yield chunk
            if size <= self._entries.max_body_size:
                self._entries.add(
                    entry_id,
                    _Stored(
                        key=key,
                        request=request,
                        status_code=response.status_code,
                        headers=_copy_headers(response.headers),
                        body=b"".join(chunks),
                        ttl_deadline=ttl_deadline,
                        tti=idle,
                        last_used=time.monotonic(),
                    ),
                )

        return hishel.Entry(
            id=entry_id, request=request, response=replace(response, stream=save_while_reading())
        )

    def get_entries(self, key: str) -> list[hishel.Entry]:
        return [
            hishel.Entry(
                id=entry_id,
                request=stored.request,
                response=hishel.Response(
                    status_code=stored.status_code,
                    headers=_copy_headers(stored.headers),
                    stream=iter([stored.body]),
                ),
            )
            for entry_id, stored in self._entries.find(key)
        ]

    def update_headers(self, id: uuid.UUID, headers: hishel.Headers) -> None:
        self._entries.update_headers(id, headers)

    def remove_entry(self, id: uuid.UUID) -> None:
        self._entries.remove(id)


async def _async_body(body: bytes) -> AsyncIterator[bytes]:
    yield body

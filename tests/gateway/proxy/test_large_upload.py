"""A 1 GiB upload streams through the proxy (a process of its own) while the proxy's memory
grows by less than 50 MB: the body is relayed chunk by chunk with back-pressure, never held.

The upstream counts the bytes it receives (httptools, nothing kept) and answers the count; the
client generates the body from one reused 1 MiB block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httptools
import httpx
import psutil

from tests.support.keel_process import keel_env, uvicorn_server

GIB = 1024**3
BLOCK = b"k" * (1024 * 1024)
MAX_GROWTH = 50 * 1024 * 1024


class _CountingProtocol(asyncio.Protocol):
    """Counts each request's body bytes and answers the count (keep-alive)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.count += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        body = str(self.count).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.count = 0


class _CountingUpstream:
    """The counting server on an event loop of its own thread: the test's loop blocks while
    ``uvicorn_server`` waits for the proxy, and an upstream on it could not answer then."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> _CountingUpstream:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        return self

    async def _start(self) -> asyncio.Server:
        return await self.loop.create_server(_CountingProtocol, "127.0.0.1", 0)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class _PeakRss:
    """Samples a process's resident memory every 50 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


async def _body(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // len(BLOCK)):
        yield BLOCK


async def test_one_gib_upload_streams_through_with_flat_memory(tmp_path: Path) -> None:
    with _CountingUpstream() as upstream:
        env = keel_env(KEEL_TEST_PROXY_UPSTREAM=f"http://127.0.0.1:{upstream.port}")
        with uvicorn_server("tests.gateway.proxy.proxy_process:app", tmp_path, env) as proxy:
            timeout = httpx.Timeout(60, connect=5)
            async with httpx.AsyncClient(base_url=proxy.base_url, timeout=timeout) as client:
                # Warm up (imports, first connection) before the baseline is taken.
                warm = await client.post("/upload", content=BLOCK * 4)
                assert warm.text == str(4 * len(BLOCK))
                baseline = psutil.Process(proxy.process.pid).memory_info().rss
                with _PeakRss(proxy.process.pid) as rss:
                    response = await client.post(
                        "/upload",
                        content=_body(GIB),
                        headers={"content-length": str(GIB)},
                    )
    print(f"1 GiB through the proxy: RSS grew {(rss.peak - baseline) / 2**20:.1f} MiB")
    assert response.status_code == 200
    assert response.text == str(GIB)
    assert rss.peak - baseline < MAX_GROWTH, f"grew {(rss.peak - baseline) / 2**20:.1f} MiB"

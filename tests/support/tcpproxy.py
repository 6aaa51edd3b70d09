"""A TCP proxy on 127.0.0.1 that tests put between a client and a real server to cut the line.

Usage::

    async with tcp_proxy("127.0.0.1", 6379) as proxy:
        client = connect(port=proxy.port)
        await proxy.cut()        # every open connection is reset, new ones are refused
        await proxy.restore()    # new connections reach the server again
        await proxy.blackhole()  # connections are accepted, but no byte goes through
        await proxy.restore()    # held bytes flow again

For a server under test that runs in another process (``keel serve``), run the proxy on a
thread of its own; the same verbs are then plain calls::

    with threaded_tcp_proxy("127.0.0.1", 6379) as proxy:
        start_server(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        proxy.cut()
        proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any


class TcpProxy:
    """Forwards every connection to ``target_host:target_port`` until :meth:`cut`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        # Cleared while blackholed: accepted connections and open pipes wait on it.
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def is_blackholed(self) -> bool:
        return not self._flowing.is_set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Reset every open connection and stop listening: new connections are refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            self._abort(writer)
        for pipe in list(self._pipes):
            pipe.cancel()
        # Connections held by a blackhole wake up, find themselves reset and end.
        self._flowing.set()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def blackhole(self) -> None:
        """Keep accepting connections but forward nothing, as on a silent network partition.

        Open connections stall (their bytes are held, not dropped); new ones are accepted and
        never reach the target. Clients see neither a reset nor an answer: only their own
        timeouts end the wait. :meth:`restore` lets the held bytes through.
        """
        self._flowing.clear()

    async def restore(self) -> None:
        """Forward again: listen on the same port after a cut, release a blackhole."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        if writer.is_closing():  # cut while it was held by a blackhole
            self._writers.discard(writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            self._writers.discard(writer)
            self._abort(writer)
            return
        self.connections_accepted += 1
        self._writers.add(upstream_writer)
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                self._abort(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        # An RST rather than a FIN: the client sees the connection die, as on a network cut.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


@asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """A started :class:`TcpProxy`, closed on exit."""
    proxy = TcpProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


class ThreadedTcpProxy:
    """A :class:`TcpProxy` on its own event loop in a daemon thread, driven by plain calls.

    For servers under test in another process, or test code without a running loop.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._proxy = TcpProxy(target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def connections_accepted(self) -> int:
        return self._proxy.connections_accepted

    def start(self) -> None:
        self._thread.start()
        self._call(self._proxy.start())

    def cut(self) -> None:
        self._call(self._proxy.cut())

    def blackhole(self) -> None:
        self._call(self._proxy.blackhole())

    def restore(self) -> None:
        self._call(self._proxy.restore())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._proxy.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)


@contextlib.contextmanager
def threaded_tcp_proxy(target_host: str, target_port: int) -> Iterator[ThreadedTcpProxy]:
    """A started :class:`ThreadedTcpProxy`, closed on exit."""
    proxy = ThreadedTcpProxy(target_host, target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()

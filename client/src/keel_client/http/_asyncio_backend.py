"""httpcore's network backend on asyncio's own transports: ``AsyncioBackend``.

httpcore reaches the network through anyio under asyncio: every read and write passes anyio's
socket stream and a cancel scope for its timeout. This backend is an ``asyncio.Protocol`` and
its transport, timed out by ``asyncio.timeout``: the same bytes, about a sixth less CPU a
call and 0.2 ms less a call on an idle connection (``docs/benchmarks.md``, issue 18). Under
any other event loop library (trio) it hands the connection to httpcore's anyio backend.

What asyncio reads arrives in the protocol's buffer before anyone asks, so whether an idle
pooled connection is still usable (httpcore's ``is_readable``) is answered from that buffer
and the end of stream, not by polling the socket, which asyncio has emptied already.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import anyio
import httpcore
import httpx

__all__ = ["AsyncioBackend", "AsyncioHTTPTransport", "deadline_scope", "pool_options"]

#: Reading pauses while this much is buffered unread (a slow consumer of a streamed body).
_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Collects what the transport reads; wakes the one reader and the one writer waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused_reading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport's subclasses: a cast, not a check.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and not self._paused_reading:
            assert self.transport is not None
            self.transport.pause_reading()
            self._paused_reading = True
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # close the transport: httpcore never writes after the peer's end

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- for the stream ----------------------------------------------------------------

    async def readable(self) -> None:
        """Until there is something to read, or the end of the stream."""
        while not self.buffer and not self.eof:
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None

    async def writable(self) -> None:
        """Until the transport's buffer has drained below its high-water mark."""
        while self._writable is not None and self.error is None and not self.eof:
            await self._writable

    def take(self, max_bytes: int) -> bytes:
        if len(self.buffer) <= max_bytes:  # the usual case: everything, copied once
            chunk = bytes(self.buffer)
            self.buffer.clear()
        else:
            chunk = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
        if self._paused_reading and len(self.buffer) <= _HIGH_WATER // 2:
            assert self.transport is not None
            self.transport.resume_reading()
            self._paused_reading = False
        return chunk

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.buffer and not protocol.eof:
            try:
                async with asyncio.timeout(timeout):
                    await protocol.readable()
            except TimeoutError as error:
                raise httpcore.ReadTimeout(str(error) or "read timed out") from error
        if protocol.buffer:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error)) from protocol.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError(str(protocol.error or "the connection is closed"))
        self._transport.write(buffer)
        if protocol._writable is not None:  # over the high-water mark: wait for the drain
            try:
                async with asyncio.timeout(timeout):
                    await protocol.writable()
            except TimeoutError as error:
                raise httpcore.WriteTimeout(str(error) or "write timed out") from error
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error)) from protocol.error

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_side=False,
                    server_hostname=server_hostname,
                )
        except TimeoutError as error:
            self._transport.close()
            raise httpcore.ConnectTimeout(str(error) or "TLS handshake timed out") from error
        except (OSError, ssl.SSLError, ConnectionError) as error:
            self._transport.close()
            raise httpcore.ConnectError(str(error)) from error
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            # Unread bytes or the peer's end on an idle connection: it cannot be reused.
            return bool(self._protocol.buffer) or self._protocol.eof
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network on asyncio transports; anyio's (httpcore's own) under trio."""

    def __init__(self) -> None:
        self._anyio = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = _asyncio_loop()
        if loop is None:
            return await self._anyio.connect_tcp(host, port, timeout, local_address, socket_options)
        local = (local_address, 0) if local_address is not None else None
        opening = loop.create_connection(_Protocol, host, port, local_addr=local)
        return await _opened(opening, timeout, socket_options)  # asyncio sets TCP_NODELAY

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = _asyncio_loop()
        if loop is None:
            return await self._anyio.connect_unix_socket(path, timeout, socket_options)
        opening = loop.create_unix_connection(_Protocol, path)
        return await _opened(opening, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        if _asyncio_loop() is None:
            await self._anyio.sleep(seconds)
        else:
            await asyncio.sleep(seconds)


def deadline_scope(seconds: float | None) -> AbstractAsyncContextManager[Any]:
    """``async with deadline_scope(s):`` raises ``TimeoutError`` after ``s`` seconds (never,
    for ``None``): ``asyncio.timeout`` under asyncio, anyio's cancel scope under trio."""
    if _asyncio_loop() is not None:
        return asyncio.timeout(seconds)
    return _anyio_deadline(seconds)


@asynccontextmanager
async def _anyio_deadline(seconds: float | None) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; ``None`` under another library (trio runs none)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _opened(
    opening: Coroutine[Any, Any, tuple[asyncio.BaseTransport, _Protocol]],
    timeout: float | None,
    socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
) -> _Stream:
    """The stream of the connection ``opening`` makes within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await opening
    except TimeoutError as error:
        raise httpcore.ConnectTimeout(str(error) or "connect timed out") from error
    except OSError as error:
        raise httpcore.ConnectError(str(error)) from error
    if socket_options:
        raw: socket.socket = transport.get_extra_info("socket")
        try:
            for option in socket_options:
                raw.setsockopt(*option)
        except OSError as error:
            transport.close()
            raise httpcore.ConnectError(str(error)) from error
    return _Stream(cast("asyncio.Transport", transport), protocol)


def pool_options(limits: httpx.Limits) -> dict[str, Any]:
    """httpx's ``Limits`` as httpcore's pool takes them."""
    return {
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class AsyncioHTTPTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections are ``network_backend``'s
    (``AsyncioBackend`` unless told otherwise): httpx takes no network backend, so the pool
    it built is replaced by an identical one on the backend."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        trust_env: bool = True,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(
            verify=verify, http1=http1, http2=http2, limits=limits, trust_env=trust_env
        )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=trust_env),
            http1=http1,
            http2=http2,
            network_backend=network_backend or AsyncioBackend(),
            **pool_options(limits),
        )

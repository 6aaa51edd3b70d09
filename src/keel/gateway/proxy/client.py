"""A lean HTTP/1.1 client for the proxy's upstream side: connections, keep-alive pools, parsing.

The proxy's hot path is one request head out, one response head in, body chunks relayed both
ways. A general client (httpx) costs more per request than the whole budget the gateway has
against nginx, so this module speaks HTTP/1.1 itself as an :class:`asyncio.Protocol` and
parses responses with ``httptools`` (llhttp, the parser uvicorn uses for requests) as the bytes
arrive. It does only what a reverse proxy needs:

- :class:`Origin`: where a target lives (scheme, host, port, base path) and its ``Host`` value.
- :class:`UpstreamConnection`: one TCP (or TLS) connection; writes a request head and body
  (content-length or chunked) and reads the response head then its body chunk by chunk.
  Back-pressure both ways: a body write waits in ``drain`` while the transport's buffer is
  above its high-water mark; the socket's reading pauses while more than 64 KiB of body wait
  for the client, so nothing is buffered whole.
- :class:`ConnectionPool`: keep-alive connections per target, at most ``max_connections`` in
  use. A connection goes back to the pool only after its response was read to the end, the
  request body was sent in full and neither side asked for ``Connection: close``.

Errors (one base, :class:`UpstreamError`)::

    UpstreamError
     ├── ConnectFailed      the TCP/TLS connection could not be made (refused, unreachable)
     ├── UpstreamTimeout    connect, write or read took longer than its limit
     └── BadResponse        not HTTP/1.x, or the connection closed before the response ended
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

#: Reading from the target pauses above this much body not yet relayed (back-pressure).
STREAM_LIMIT: Final = 64 * 1024
#: Idle keep-alive connections kept per target beyond those in use.
MAX_IDLE_PER_TARGET: Final = 256

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Response headers that delimit a body (without either, the body ends at close).
_FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding"})


class UpstreamError(Exception):
    """An upstream attempt failed before or while its response was read."""


class ConnectFailed(UpstreamError):
    """The connection to the target could not be opened."""


class UpstreamTimeout(UpstreamError):
    """Connecting, writing the request or reading the response took too long."""


class BadResponse(UpstreamError):
    """The target answered something that is not an HTTP/1.x response, or closed early."""

    def __init__(self, message: str, *, before_any_byte: bool = False) -> None:
        super().__init__(message)
        #: Whether the connection closed before a single response byte arrived: on a reused
        #: keep-alive connection that is the target having closed it while idle.
        self.before_any_byte = before_any_byte


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one target lives, parsed once from its URL."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash)
    host_header: bytes  # host[:port], the port only when not the scheme's default

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[scheme]
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            authority = f"{authority}:{port}"
        return cls(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            base_path=parts.path.rstrip("/"),
            host_header=authority.encode("ascii"),
        )

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    def target_path(self, upstream_path: str) -> str:
        """The request target sent upstream: the base path, then the route's upstream path."""
        return self.base_path + upstream_path if self.base_path else upstream_path


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]


async def open_connection(
    origin: Origin, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> UpstreamConnection:
    """A new connection to ``origin``: :class:`ConnectFailed` or :class:`UpstreamTimeout`."""
    tls: ssl.SSLContext | None = None
    if origin.is_tls:
        tls = ssl_context or ssl.create_default_context()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                UpstreamConnection,
                origin.host,
                origin.port,
                ssl=tls,
                server_hostname=origin.host if tls else None,
            )
    except TimeoutError:
        raise UpstreamTimeout(f"connecting to {origin.url} took over {timeout} s") from None
    except OSError as exc:  # refused, unreachable, DNS, TLS handshake
        raise ConnectFailed(f"cannot connect to {origin.url}: {exc}") from None
    return connection


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a target; used by one request at a time.

    Call order per request: :meth:`begin`, :meth:`write` (head, then body through
    :meth:`write_chunk` and :meth:`end_chunked_body`), :meth:`read_head`, then
    :meth:`read_body` until it says the body ended.

    An :class:`asyncio.Protocol`, not streams: the event loop hands each read to
    :meth:`data_received`, which feeds ``httptools`` at once (it calls the ``on_*`` methods),
    and a reader waits on one future that the parsing resolves, its timeout a timer handle
    cancelled when the answer came. Measured against the streams version (a ``StreamReader``
    buffer, ``read()`` and an ``asyncio.timeout`` context per read): see the commit message.
    """

    __slots__ = (
        "_body",
        "_body_ended",
        "_body_size",
        "_drain_waiter",
        "_eof",
        "_error",
        "_headers",
        "_interim",
        "_is_eof_delimited",
        "_is_head_request",
        "_is_keep_alive",
        "_is_reading_paused",
        "_is_writing_paused",
        "_loop",
        "_parser",
        "_parser_clean",
        "_received_any",
        "_status",
        "_unsolicited",
        "_waiter",
        "is_request_complete",
        "is_reused",
        "transport",
    )

    transport: asyncio.Transport  # set by connection_made, before the connection is returned

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.is_reused = False
        self.is_request_complete = False
        self._parser: httptools.HttpResponseParser | None = None
        self._parser_clean = False  # the parser ended a whole response it framed itself
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_ended = False
        self._interim = False
        self._is_head_request = False
        self._is_eof_delimited = False
        self._is_keep_alive = False
        self._received_any = False
        self._eof = False  # the target closed its side (or the connection is gone)
        self._error: UpstreamError | None = None  # a parse or socket error, raised on read
        self._unsolicited = False  # bytes arrived outside an exchange: never reuse
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._is_reading_paused = False
        self._is_writing_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._body_ended or self._error is not None:
            # Nothing is being read: the target spoke out of turn (or after a HEAD's
            # head, or after a malformed answer). The bytes are not ours to relay.
            self._unsolicited = True
            return
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = BadResponse("the target switched protocols on a plain HTTP request")
        except httptools.HttpParserError as exc:
            self._error = BadResponse(f"malformed response from the target: {exc}")
        if self._body_size >= STREAM_LIMIT and not self._is_reading_paused:
            # Back-pressure: the client takes the body slower than the target sends it.
            self._is_reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None and not self._body_ended:
            self._error = BadResponse(
                f"the connection failed: {exc}", before_any_byte=not self._received_any
            )
        self._wake()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(BadResponse(f"the connection failed while writing: {exc}"))

    def pause_writing(self) -> None:
        self._is_writing_paused = True

    def resume_writing(self) -> None:
        self._is_writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Closed by us, or by the target (EOF seen while the connection sat idle)."""
        return self._eof or self._unsolicited or self.transport.is_closing()

    @property
    def is_reusable(self) -> bool:
        """Whether the exchange ended cleanly on a connection both sides keep alive."""
        return (
            self.is_request_complete
            and self._body_ended
            and not self._is_eof_delimited
            and self._is_keep_alive
            and not self.is_closed
        )

    def close(self) -> None:
        """Abort the connection (no graceful TLS close: the exchange is being abandoned)."""
        self.transport.abort()

    def begin(self, *, is_head_request: bool) -> None:
        """Reset the parsing state for a new exchange. The parser is kept when it parsed the
        last response to its end (llhttp then waits for the next one); a fresh one otherwise,
        and after a HEAD: llhttp cannot be told that a response to HEAD has no body, so the
        old parser would wait for the ``Content-Length`` bytes that never come. (A new
        parser per exchange cost 4% of the proxy's CPU.)"""
        if self._parser is None or not self._parser_clean:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_clean = False
        self._headers = []
        self._status = 0
        self._body = []
        self._body_size = 0
        self._body_ended = False
        self._interim = False
        self._is_head_request = is_head_request
        self._is_eof_delimited = False
        self._is_keep_alive = False
        self._received_any = False
        self.is_request_complete = False

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_all(self, parts: list[bytes]) -> None:
        """Several buffers in one go (the request head and a small body: one send)."""
        self.transport.writelines(parts)

    async def drain(self, timeout: float) -> None:
        """Wait until the socket took the written bytes (back-pressure from the target)."""
        if not self._is_writing_paused:
            return
        if self._eof:
            raise BadResponse("the connection failed while writing")
        waiter = self._drain_waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire_write, waiter, timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    def write_chunk(self, chunk: bytes) -> None:
        """One chunk of a ``Transfer-Encoding: chunked`` body (an empty one is skipped: it
        would end the body)."""
        if chunk:
            self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))

    def end_chunked_body(self) -> None:
        self.transport.write(b"0\r\n\r\n")

    # -- reading ---------------------------------------------------------------------------

    async def read_head(self, timeout: float) -> ResponseHead:
        """The response's status and headers (interim 1xx responses skipped)."""
        while not self._status or self._interim:
            await self._wait(timeout)
        return ResponseHead(self._status, self._headers)

    async def read_body(self, timeout: float) -> tuple[bytes, bool]:
        """The next part of the body and whether the body ended with it. ``timeout`` bounds
        the wait between two chunks."""
        while not self._body and not self._body_ended:
            await self._wait(timeout)
        body = self._body
        chunk = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._body_size = 0
        if self._is_reading_paused:
            self._is_reading_paused = False
            self.transport.resume_reading()
        return chunk, self._body_ended

    async def _wait(self, timeout: float) -> None:
        """Until the parser made progress, the stream ended or failed; the caller's loop
        looks again at what the parser found."""
        if self._error is not None:
            raise self._error
        if self._eof:
            self._end_of_stream()
            return
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire_read, waiter, timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _end_of_stream(self) -> None:
        if self._status and not self._interim and self._is_eof_delimited:
            self._body_ended = True  # a body without length or chunking ends at close
            return
        raise BadResponse(
            "the target closed the connection before the response ended",
            before_any_byte=not self._received_any,
        )

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        self._status = status
        # Read now: llhttp forgets it once the message is complete.
        self._is_keep_alive = self._parser.should_keep_alive()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            self._headers = []
            return
        if self._is_head_request or status in (204, 304):
            self._body_ended = True
            return
        self._is_eof_delimited = True
        for name, _ in self._headers:  # a loop, not any(genexpr): this runs per response
            if name.lower() in _FRAMING_HEADERS:
                self._is_eof_delimited = False
                break

    def on_body(self, body: bytes) -> None:
        if self._body_ended:
            return  # a body after a HEAD's head: not part of the answer
        self._body.append(body)
        self._body_size += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._status = 0
            return
        self._body_ended = True
        self._is_eof_delimited = False
        self._parser_clean = not self._is_head_request


def _expire_read(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"no response byte within {timeout} s"))


def _expire_write(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"writing the request took over {timeout} s"))


@dataclass(eq=False)
class ConnectionPool:
    """Keep-alive connections to one target, at most ``max_connections`` in use at once.

    ``acquire`` waits for a free slot within the connect timeout (a target that already has
    ``max_connections`` requests in flight is as unreachable as one that does not answer),
    then reuses the most recently returned idle connection or opens a new one.
    """

    origin: Origin
    max_connections: int
    ssl_context: ssl.SSLContext | None = None
    accepted: int = 0  # connections opened over the pool's life (tests and metrics)
    _idle: deque[UpstreamConnection] = field(default_factory=deque)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_connections)

    async def acquire(self, connect_timeout: float) -> UpstreamConnection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(connect_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{self.origin.url} has {self.max_connections} requests in flight"
                ) from None
        else:
            await self._slots.acquire()
        try:
            return await self._reuse_or_open(connect_timeout)
        except BaseException:
            self._slots.release()
            raise

    async def _reuse_or_open(self, connect_timeout: float) -> UpstreamConnection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed:
                connection.is_reused = True
                return connection
            connection.close()
        connection = await open_connection(self.origin, connect_timeout, self.ssl_context)
        self.accepted += 1
        return connection

    async def open_fresh(self, connect_timeout: float) -> UpstreamConnection:
        """A new connection in the slot of a reused one that turned out to be closed."""
        connection = await open_connection(self.origin, connect_timeout, self.ssl_context)
        self.accepted += 1
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Give the connection's slot back; keep the connection if its exchange ended clean."""
        self._slots.release()
        if connection.is_reusable and len(self._idle) < MAX_IDLE_PER_TARGET:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


async def probe(
    origin: Origin, path: str, timeout: float, ssl_context: ssl.SSLContext | None
) -> int:
    """``GET path`` on a connection of its own (``Connection: close``): the status, or an
    :class:`UpstreamError`. Used by the active health checks."""
    try:
        async with asyncio.timeout(timeout):
            return await _probe_once(origin, path, timeout, ssl_context)
    except TimeoutError:
        raise UpstreamTimeout(f"{origin.url} did not answer {path} within {timeout} s") from None


async def _probe_once(
    origin: Origin, path: str, timeout: float, ssl_context: ssl.SSLContext | None
) -> int:
    connection = await open_connection(origin, timeout, ssl_context)
    try:
        connection.begin(is_head_request=False)
        target = origin.target_path(path).encode("ascii")
        connection.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
            b"User-Agent: keel-gateway-health\r\n\r\n" % (target, origin.host_header)
        )
        connection.is_request_complete = True
        head = await connection.read_head(timeout)
        return head.status
    finally:
        connection.close()

"""The proxy's own HTTP/1.1 listener: an :class:`asyncio.Protocol` on ``httptools``.

::

    client bytes ─ data_received ─ httptools (llhttp) ─ on_header … on_message_complete
        └─ a request: scope (a plain dict), its body as it arrives ─ the app (GatewayProxy)
             ├─ receive(): the body, chunk by chunk (reading paused above 64 KiB unread)
             └─ send():    the head is held for the first body part: an answer of one
                           body part (most proxied answers) goes out in ONE write (a head
                           whose body is not there yet goes at the loop's next turn)
        WebSocket upgrade ─ the connection handed to uvicorn's websockets protocol

It replaces uvicorn's HTTP protocol for the proxy only (Keel's API keeps uvicorn). It serves
the same ASGI app with the same messages, so every feature of the proxy works as before
(streaming both ways, server-sent events, caching, retries, the breaker, transforms,
identity, request ids, size limits, problem+json errors); what it leaves out is what the
proxy does not use: a task per request's bookkeeping for the server's own access log and
concurrency limit, header checks for values httptools already parsed, and the two writes
(head, then body) of every response. Measured: see the commit message and
docs/gateway.md.

HTTP/1.1 as uvicorn speaks it: keep-alive (closed after ``keep_alive_seconds`` idle),
pipelining (requests answered in order, reading paused while one waits),
``Expect: 100-continue`` answered when the app first reads the body, ``Content-Length`` or
chunked responses, ``Connection: close`` honoured both ways, HTTP/1.0 closed after its
answer. A request httptools cannot parse is answered 400 problem+json and the connection
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, cast

import httptools

from keel.core.logging import get_logger
from keel_client.edge._enforce import problem

log = get_logger("keel.gateway.proxy.listener")

#: Body bytes received and not yet read by the app above which reading the socket pauses.
HIGH_WATER: Final = 64 * 1024
#: How long a connection may wait for its next request.
KEEP_ALIVE_SECONDS: Final = 75.0
#: The most a request's target and headers may take (``KEEL_MAX_HEADER_BYTES``' default).
MAX_HEAD_BYTES: Final = 32 * 1024

App = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class ListenerState:
    """What every connection of one listener shares: the app, the open connections, the
    uvicorn configuration a WebSocket upgrade is handed to."""

    def __init__(
        self, app: App, ws_config: Any, keep_alive_seconds: float, max_head_bytes: int
    ) -> None:
        self.app = app
        self.ws_config = ws_config
        self.keep_alive_seconds = keep_alive_seconds
        self.max_head_bytes = max_head_bytes
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._ws_state: Any = None

    def ws_server_state(self) -> Any:
        if self._ws_state is None:
            from uvicorn.server import ServerState

            self._ws_state = ServerState()
        return self._ws_state


class _Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "body",
        "chunked",
        "connection",
        "disconnected",
        "expect_continue",
        "head",
        "is_head",
        "is_http10",
        "keep_alive",
        "last_read",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
        "waiter",
    )

    def __init__(
        self,
        connection: HttpConnection,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.is_head = scope["method"] == "HEAD"
        self.is_http10 = scope["http_version"] == "1.0"
        self.body = bytearray()
        self.more_body = True
        self.last_read = False  # the app was handed the body's end
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.head: bytes | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI -----------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        connection = self.connection
        if self.expect_continue and not self.response_started:
            self.expect_continue = False
            if not connection.transport.is_closing():
                connection.transport.write(_CONTINUE)
        while not (self.disconnected or self.response_complete):
            if self.body or (not self.more_body and not self.last_read):
                break
            # Nothing to hand over: ask for more (or, the body read, wait for the client to
            # leave: the proxy watches for that while it relays a long answer).
            connection.resume_reading()
            self.waiter = connection.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body.clear()
        if not self.more_body:
            self.last_read = True
        connection.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if self.disconnected:
            return  # the client left: nothing to send it (as uvicorn)
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self.response_started = True
            self.expect_continue = False
            self.head = self._head(message["status"], message.get("headers", ()))
            # Held for the first body part, which is usually there already (the upstream's
            # head and body came in one read): one write. If the app must wait for it (an
            # event stream between events), the head goes out at the loop's next turn.
            self.connection.loop.call_soon(self._flush_head)
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        head, self.head = self.head, None
        if self.chunked:
            if body:
                parts = [b"%x\r\n" % len(body), body, b"\r\n"]
                if head is not None:
                    parts.insert(0, head)
                if not more:
                    parts.append(b"0\r\n\r\n")
                data = b"".join(parts)
            else:
                data = (head or b"") + (b"" if more else b"0\r\n\r\n")
        elif body and not self.is_head:
            data = head + body if head is not None else body
        else:
            data = head or b""
        transport = self.connection.transport
        if data:
            transport.write(data)
        if not more:
            self.response_complete = True
            self.wake()
            self.connection.response_complete(self)
        elif self.connection.is_writing_paused:
            await self.connection.drain()

    def _flush_head(self) -> None:
        head, self.head = self.head, None
        if head is not None and not self.connection.transport.is_closing():
            self.connection.transport.write(head)

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [_STATUS_LINES.get(status) or _status_line(status)]
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue
            elif lowered == b"transfer-encoding":
                continue  # the framing is this hop's
            lines.append(b"%s: %s\r\n" % (name, value))
        if (
            not has_length
            and status not in _NO_BODY_STATUSES
            and status >= 200
            and not self.is_head
        ):
            if self.is_http10:
                self.keep_alive = False  # no chunked coding in HTTP/1.0: the close ends it
            else:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Each line ends with the one CRLF it was given: a name or value holding a line break
        # (which would split the head) shows as one too many (one count, not a check a field).
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
            raise RuntimeError("a response header holds a line break")
        return head


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    def __init__(self, state: ListenerState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.is_upgrade = False
        self.current: _Exchange | None = None  # being answered
        self.parsing: _Exchange | None = None  # whose bytes are arriving
        self.waiting: deque[_Exchange] = deque()  # pipelined behind ``current``
        self.is_reading_paused = False
        self.is_writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._keep_alive_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # when the last answer went out (the loop's clock)
        self._reading_head = False
        self._head_bytes = 0  # the target's, names' and values' bytes of the head being read
        self._head_received = 0  # bytes received while a head was incomplete
        self._head_too_large = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.server = (str(local[0]), int(local[1]))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._arm_keep_alive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._disarm_keep_alive()
        for exchange in (self.current, self.parsing, *self.waiting):
            if exchange is not None and not exchange.response_complete:
                exchange.disconnected = True
                exchange.wake()
        self.is_writing_paused = False
        self._release_drains()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost tells the exchange

    def pause_writing(self) -> None:
        self.is_writing_paused = True

    def resume_writing(self) -> None:
        self.is_writing_paused = False
        self._release_drains()

    def _release_drains(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if self.is_writing_paused and not self.transport.is_closing():
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def data_received(self, data: bytes) -> None:
        self._idle_since = self.loop.time()
        if self._head_too_large:
            return  # answered 431 and closing: the rest is dropped
        if self._reading_head:
            # llhttp holds a header line until it ends: count the raw bytes too (never more
            # than the head's own, so this refuses nothing the exact count would pass).
            self._head_received += len(data)
            if self._head_received > 2 * self.state.max_head_bytes:
                self._refuse_head()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            if self.is_upgrade and self.state.ws_config is None:
                self._bad_request("no WebSocket support configured")
            elif self.is_upgrade:
                self._hand_to_websocket(data[offset:])
            # another protocol: answered as plain HTTP, then closed (the parser stops here)
        except (httptools.HttpParserError, _BadRequest) as error:
            if self._head_too_large:
                self._refuse_head()
            else:
                self._bad_request(str(error) or "Invalid HTTP request.")

    def resume_reading(self) -> None:
        if self.is_reading_paused and self.current is not None:
            exchange = self.current
            if len(exchange.body) <= HIGH_WATER and not self.waiting:
                self.is_reading_paused = False
                self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self.is_reading_paused:
            self.is_reading_paused = True
            self.transport.pause_reading()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reading_head = True
        self._head_bytes = 0
        self._head_received = 0
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self.is_upgrade = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 §5.5)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.state.max_head_bytes:
            self._head_too_large = True
            raise _BadRequest("the head is too large")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if parser.should_upgrade() and self._upgrade_token() == b"websocket":
            self.is_upgrade = True
            self._upgrade_method = method
            return
        try:
            parsed = httptools.parse_url(self.url)
            raw_path: bytes = parsed.path
            path = raw_path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise _BadRequest("Invalid request target.") from None
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": "",
            "method": method,
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "state": {},
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        if parser.should_upgrade():
            keep_alive = False  # an upgrade we do not speak: answered, then closed
        exchange = _Exchange(self, scope, keep_alive, self.expect_continue)
        self.parsing = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self.waiting.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.response_complete:
            return  # an unread body after the answer: dropped
        exchange.body += body
        if len(exchange.body) > HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        self.parsing = None
        exchange.more_body = False
        exchange.wake()

    def _upgrade_token(self) -> bytes | None:
        connection: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                connection = [token.strip().lower() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade if b"upgrade" in connection else None

    # -- the exchanges ---------------------------------------------------------------------

    def _start(self, exchange: _Exchange) -> None:
        self.current = exchange
        task = self.loop.create_task(self._run(exchange))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.state.app(exchange.scope, exchange.receive, exchange.send)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                self.transport.abort()
                raise
            if exchange.response_complete:
                log.exception("gateway.proxy.error_after_answer")
            elif exchange.response_started:
                # Mid-answer (the upstream failed, say): a truncated body must not pass for a
                # whole one, so the connection goes.
                log.warning("gateway.proxy.aborted", error=type(error).__name__)
                self.transport.abort()
            else:
                log.exception("gateway.proxy.error")
                self._answer_problem(
                    exchange,
                    problem(500, "internal", "Internal error", "The proxy failed."),
                )
            return
        if not exchange.response_complete:
            if exchange.response_started:
                self.transport.abort()
            else:
                self._answer_problem(
                    exchange,
                    problem(500, "internal", "Internal error", "The proxy gave no answer."),
                )

    def _answer_problem(self, exchange: _Exchange, refusal: Any) -> None:
        if exchange.disconnected or self.transport.is_closing():
            return
        exchange.keep_alive = False
        exchange.response_started = True
        head = exchange._head(refusal.status, refusal.headers)
        self.transport.write(head + refusal.body)
        exchange.response_complete = True
        self.response_complete(exchange)

    def response_complete(self, exchange: _Exchange) -> None:
        """The answer is out: close, or go on with the next request."""
        if exchange is not self.current:
            return
        self.current = None
        if self.transport.is_closing():
            return
        if not exchange.keep_alive:
            self.transport.close()
            return
        if self.waiting:
            self._start(self.waiting.popleft())
            if not self.waiting:
                self.resume_reading()
            return
        if self.is_reading_paused:
            self.is_reading_paused = False
            self.transport.resume_reading()
        if self.parsing is None:
            self._arm_keep_alive()

    # -- idle connections, bad requests, upgrades ------------------------------------------

    def _arm_keep_alive(self) -> None:
        # One timer for the connection's life, not one per answer: it looks at when the
        # connection fell idle when it fires, and sets itself again for the rest.
        self._idle_since = self.loop.time()
        if self._keep_alive_timer is None:
            self._keep_alive_timer = self.loop.call_later(
                self.state.keep_alive_seconds, self._idle_timeout
            )

    def _disarm_keep_alive(self) -> None:
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
            self._keep_alive_timer = None

    def _idle_timeout(self) -> None:
        self._keep_alive_timer = None
        if self.transport.is_closing():
            return
        left = self._idle_since + self.state.keep_alive_seconds - self.loop.time()
        if self.current is not None or self.parsing is not None:
            left = self.state.keep_alive_seconds  # busy: look again later
        if left > 0:
            self._keep_alive_timer = self.loop.call_later(left, self._idle_timeout)
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """The listener stops: an idle connection closes now, a busy one after its answer."""
        if self.current is None:
            self.transport.close()
        else:
            self.current.keep_alive = False
            self.waiting.clear()

    def _bad_request(self, detail: str) -> None:
        if self.transport.is_closing():
            return
        refusal = problem(400, "bad-request", "Bad request", "The request is not valid HTTP/1.1.")
        lines = [_STATUS_LINES[400]]
        lines.extend(b"%s: %s\r\n" % header for header in refusal.headers)
        lines.append(b"connection: close\r\n\r\n")
        if self.current is None:
            self.transport.write(b"".join(lines) + refusal.body)
            self.transport.close()
        else:
            # An answer is being sent: a bad request behind it ends the connection after it.
            self.current.keep_alive = False
            self.waiting.clear()
            self._pause_reading()
        log.info("gateway.proxy.bad_request", detail=detail[:200])

    def _refuse_head(self) -> None:
        """431 problem+json (as Keel's API answers), then close."""
        self._head_too_large = True
        self._reading_head = False
        refusal = problem(
            431,
            "headers-too-large",
            "Request header fields too large",
            f"The request's target and headers exceed {self.state.max_head_bytes} bytes.",
        )
        log.warning("gateway.proxy.headers_too_large", limit=self.state.max_head_bytes)
        if self.current is not None:
            self.current.keep_alive = False
            self.waiting.clear()
            self._pause_reading()
            return
        if not self.transport.is_closing():
            lines = [_STATUS_LINES[431]]
            lines.extend(b"%s: %s\r\n" % header for header in refusal.headers)
            lines.append(b"connection: close\r\n\r\n")
            self.transport.write(b"".join(lines) + refusal.body)
            self.transport.close()

    def _hand_to_websocket(self, rest: bytes) -> None:
        """Give the connection to uvicorn's WebSocket protocol, as uvicorn does: it reads
        the upgrade request again from its head rebuilt here."""
        config = self.state.ws_config
        self.state.connections.discard(self)
        self._disarm_keep_alive()
        head = [self._upgrade_method.encode("ascii"), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        protocol = config.ws_protocol_class(
            config=config, server_state=self.state.ws_server_state(), app_state={}
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(head) + rest)

    _upgrade_method = "GET"


class _BadRequest(Exception):
    """A request httptools parsed but this listener cannot serve (its target, say)."""


class ProxyListener:
    """The listening socket(s) of the proxy, in this process's event loop."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        ws_config: Any,
        keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
        max_head_bytes: int = MAX_HEAD_BYTES,
        reuse_port: bool = False,
    ) -> None:
        self.state = ListenerState(app, ws_config, keep_alive_seconds, max_head_bytes)
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self.state),
            self.host,
            self.port,
            backlog=2048,
            reuse_port=self.reuse_port or None,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let the answers in flight finish (up to ``timeout``), close."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.state.connections):
            connection.shutdown()
        ws_state = self.state._ws_state
        if ws_state is not None:
            for protocol in list(ws_state.connections):
                protocol.shutdown()
        tasks = set(self.state.tasks) | (set(ws_state.tasks) if ws_state is not None else set())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        for connection in list(self.state.connections):
            connection.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)

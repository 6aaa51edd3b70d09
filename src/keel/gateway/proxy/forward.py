"""Forwarding one HTTP request to a pool and relaying its response: :func:`forward`.

The gateway app has matched the route, rewritten the path and built the headers to send
(transforms, identity); :func:`forward` does the rest, as a reverse proxy must (RFC 9110
§7.6): it drops hop-by-hop headers (the fixed list and those the ``Connection`` header names),
appends the client to ``X-Forwarded-For``, sets ``X-Forwarded-Proto``/``X-Forwarded-Host``,
and sets ``Host`` to the target's unless the caller's headers carry one.

Bodies stream both ways with back-pressure and are never held whole: the request body goes
upstream as ASGI ``receive`` hands it over (``Transfer-Encoding: chunked`` when the client
sent no ``Content-Length``), the response body goes to the client as the target sends it, so
a server-sent event reaches the client before the target has finished. A request body of at
most 64 KiB that a retry might replay is read first instead.

Failures before the response started are answered as problem+json (never a 500):

- ``upstream-unavailable`` 503: every target is ejected, unhealthy or behind an open breaker;
- ``bad-gateway`` 502: the connection failed, or the answer was not HTTP;
- ``gateway-timeout`` 504: connecting or the response's first byte took too long.

After the response started there is no status left to change: the client's connection is
aborted (:class:`UpstreamResponseAborted` propagates to the server, which closes it), so a
truncated body is never mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from starlette.types import Message, Receive, Scope, Send

from keel.core.errors import problem_response
from keel_client.edge._upstreams import (
    IDEMPOTENT_METHODS,
    REPLAYABLE_BODY_BYTES,
    RetryCondition,
    RetryPolicy,
    Timeouts,
)

from .client import (
    BadResponse,
    ConnectFailed,
    ResponseHead,
    UpstreamConnection,
    UpstreamError,
    UpstreamTimeout,
)
from .retry import may_retry
from .runtime import TargetRuntime, UpstreamRuntime

#: RFC 9110 §7.6.1 (and the older names still seen): meaningful for one connection only.
HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Request headers :func:`forward` writes itself: the body framing it chose, and the
#: forwarding headers. ``Expect`` is dropped: the server already answered the client's
#: ``100-continue``, and the body is sent without waiting for the target's.
_REQUEST_HEADERS_SET_HERE: Final = frozenset(
    {b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
#: What never goes upstream from the caller's headers (hop-by-hop or written here).
_REQUEST_HEADERS_DROPPED: Final = HOP_BY_HOP_HEADERS | _REQUEST_HEADERS_SET_HERE
#: Answers of a target that count as its failure, and the retry condition each is.
_FAILURE_STATUSES: Final[dict[int, RetryCondition]] = {502: "502", 503: "503", 504: "504"}
_WHITESPACE: Final = re.compile(r"\s")
#: The status recorded when the client went away before it could be answered (nginx's).
CLIENT_CLOSED_REQUEST: Final = 499

ResponseHeadersHook = Callable[[int, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]


@dataclass(slots=True)
class ForwardResult:
    """What happened to one forwarded request, for the access log and the metrics."""

    status: int = 0
    bytes_in: int = 0  # request body bytes sent upstream
    bytes_out: int = 0  # response body bytes relayed to the client
    target_url: str | None = None  # the target of the last attempt
    attempts: int = 0
    upstream_seconds: float = 0.0  # last attempt: from connecting to the response head
    problem: str | None = None  # the problem slug when the proxy answered itself


class UpstreamResponseAborted(Exception):
    """The target failed after the response had started: the client connection must be
    aborted. Raised out of :func:`forward`; ``result`` says what had been relayed."""

    def __init__(self, message: str, result: ForwardResult) -> None:
        super().__init__(message)
        self.result = result


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


# -- the request body -----------------------------------------------------------------------


class _RequestBody:
    """The client's body: none, buffered whole (replayable), or streamed from ``receive``."""

    __slots__ = ("buffered", "is_chunked", "is_started", "length", "receive")

    def __init__(self, receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.receive = receive
        self.length: int | None = None
        self.is_chunked = False
        self.buffered: list[bytes] | None = None
        self.is_started = False  # a byte was read from ``receive`` for streaming
        for name, value in scope_headers:
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.is_chunked = True
        if self.is_chunked:
            self.length = None  # RFC 9112 §6.3: chunked wins over Content-Length
        elif self.length is None:
            self.buffered = []  # no framing header: the request has no body

    @property
    def has_body(self) -> bool:
        return self.is_chunked or self.length is not None

    @property
    def is_replayable(self) -> bool:
        return self.buffered is not None or not self.is_started

    def framing_header(self) -> bytes:
        if self.is_chunked:
            return b"transfer-encoding: chunked\r\n"
        if self.length is not None:
            return b"content-length: %d\r\n" % self.length
        return b""

    async def buffer(self) -> None:
        """Read the whole (small) body now, so that a retry can send it again."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            if chunk := message.get("body", b""):
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.buffered = chunks

    async def send(self, connection: UpstreamConnection, write_seconds: float) -> int:
        """Write the body upstream; the number of bytes."""
        if self.buffered is not None:
            return await self._send_buffered(connection, write_seconds)
        self.is_started = True
        sent = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                sent += len(chunk)
                if self.is_chunked:
                    connection.write_chunk(chunk)
                else:
                    connection.write(chunk)
                await connection.drain(write_seconds)
            if not message.get("more_body", False):
                break
        if self.is_chunked:
            connection.end_chunked_body()
        return sent

    async def _send_buffered(self, connection: UpstreamConnection, write_seconds: float) -> int:
        assert self.buffered is not None
        for chunk in self.buffered:
            if self.is_chunked:
                connection.write_chunk(chunk)
            else:
                connection.write(chunk)
        if self.is_chunked:
            connection.end_chunked_body()
        await connection.drain(write_seconds)
        return sum(len(chunk) for chunk in self.buffered)


# -- headers --------------------------------------------------------------------------------


def _header_value(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names a ``Connection`` header lists (hop-by-hop for this hop only)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            _add_tokens(tokens, value)
    return tokens


#: ``Connection`` options that name no header to drop (and hop-by-hop ones, dropped anyway).
_CONNECTION_OPTIONS: Final = HOP_BY_HOP_HEADERS | {b"close"}


def _add_tokens(tokens: set[bytes], connection_value: bytes) -> set[bytes]:
    # ``keep-alive`` or ``close``, as nearly every upstream sends, leaves nothing to filter:
    # the second pass over the headers is skipped then.
    tokens.update(token.strip().lower() for token in connection_value.split(b","))
    tokens -= _CONNECTION_OPTIONS
    return tokens


# The two functions below look at each header once (one ``lower()``): the ``Connection``
# header is itself hop-by-hop, so the names it lists are collected on the way and filtered
# out afterwards, which most messages (no such header) skip. Measured on the hot path: the
# separate ``connection_tokens`` pass and set union cost more than the copying they feed.


def upstream_request_headers(
    scope: Scope, request_headers: Iterable[tuple[bytes, bytes]]
) -> tuple[bytes, bool]:
    """The request's header lines for the target (without ``Host`` unless the caller set one,
    without body framing) and whether the caller set ``Host``."""
    names: list[bytes] = []
    lines: list[bytes] = []
    forwarded_for: list[bytes] = []
    tokens: set[bytes] = set()
    for name, value in request_headers:
        lowered = name.lower()
        if lowered in _REQUEST_HEADERS_DROPPED:
            if lowered == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lowered == b"connection":
                _add_tokens(tokens, value)
            continue
        names.append(lowered)
        lines.append(b"%s: %s\r\n" % (name, value))
    if tokens:
        kept = [
            (lowered, line)
            for lowered, line in zip(names, lines, strict=True)
            if lowered not in tokens
        ]
        names = [lowered for lowered, _ in kept]
        lines = [line for _, line in kept]
    has_host = b"host" in names
    client = scope.get("client")
    if client:
        forwarded_for.append(client[0].encode("ascii"))
    if forwarded_for:
        lines.append(b"x-forwarded-for: %s\r\n" % b", ".join(forwarded_for))
    lines.append(b"x-forwarded-proto: %s\r\n" % scope.get("scheme", "http").encode("ascii"))
    original_host = _header_value(scope["headers"], b"host")
    if original_host is not None:
        lines.append(b"x-forwarded-host: %s\r\n" % original_host)
    return b"".join(lines), has_host


def downstream_response_headers(
    headers: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The target's response headers without the hop-by-hop ones (the server in front frames
    the body for its own connection)."""
    kept: list[tuple[bytes, bytes]] = []
    tokens: set[bytes] = set()
    for header in headers:
        lowered = header[0].lower()
        if lowered in HOP_BY_HOP_HEADERS:
            if lowered == b"connection":
                _add_tokens(tokens, header[1])
            continue
        kept.append(header)
    if tokens:
        kept = [header for header in kept if header[0].lower() not in tokens]
    return kept


def _check_upstream_path(upstream_path: str) -> bytes:
    # The path goes into the request line verbatim: a space or a line break would let a
    # rewritten path smuggle a second request or header.
    if not upstream_path.startswith("/") or _WHITESPACE.search(upstream_path):
        raise ValueError(f"upstream_path must be an origin-form target: {upstream_path!r}")
    return upstream_path.encode("latin-1")


# -- problems -------------------------------------------------------------------------------

_PROBLEMS: Final[dict[str, tuple[int, str]]] = {
    "upstream-unavailable": (503, "Upstream unavailable"),
    "bad-gateway": (502, "Bad gateway"),
    "gateway-timeout": (504, "Gateway timeout"),
}


def _problem_for(error: UpstreamError | None) -> tuple[str, str]:
    if error is None:
        return "upstream-unavailable", "No target of the upstream pool is available."
    if isinstance(error, UpstreamTimeout):
        return "gateway-timeout", "The upstream did not answer in time."
    if isinstance(error, ConnectFailed):
        return "bad-gateway", "The upstream could not be reached."
    return "bad-gateway", "The upstream sent an invalid or incomplete response."


async def _answer_problem(
    scope: Scope, receive: Receive, send: Send, result: ForwardResult, slug: str, detail: str
) -> ForwardResult:
    status, title = _PROBLEMS[slug]
    state = scope.get("state") or {}
    response = problem_response(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        instance=scope.get("path"),
        request_id=state.get("request_id") if isinstance(state, dict) else None,
        headers={"Retry-After": "1"} if status == 503 else None,
    )
    await response(scope, receive, send)
    result.status = status
    result.problem = slug
    return result


# -- forwarding -----------------------------------------------------------------------------


def _retry_condition(error: UpstreamError) -> RetryCondition | None:
    if isinstance(error, ConnectFailed):
        return "connect_error"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    return None  # a malformed answer or a reset: the request may have been acted on


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    runtime: UpstreamRuntime,
    upstream_path: str,
    request_headers: list[tuple[bytes, bytes]],
    timeouts: Timeouts,
    retries: RetryPolicy,
    hash_key: str | None,
    response_headers_hook: ResponseHeadersHook | None = None,
) -> ForwardResult:
    """Send the request to a target of ``runtime``'s pool and relay the response.

    ``upstream_path`` is the origin-form target (path and query, already encoded) after the
    route's rewrite; the target's base path is prefixed to it. ``request_headers`` are the
    headers to send (the gateway's transforms applied). ``response_headers_hook`` may edit
    the response headers (security headers, CORS) before they are sent. Raises
    :class:`UpstreamResponseAborted` when the target fails after the response started."""
    method: str = scope["method"]
    path = _check_upstream_path(upstream_path)
    header_lines, has_host = upstream_request_headers(scope, request_headers)
    body = _RequestBody(receive, scope["headers"])
    result = ForwardResult()
    is_retryable_method = method in IDEMPOTENT_METHODS and retries.attempts > 0
    try:
        if (
            is_retryable_method
            and body.length is not None
            and 0 < body.length <= REPLAYABLE_BODY_BYTES
        ):
            await body.buffer()
    except ClientDisconnected:
        result.status = CLIENT_CLOSED_REQUEST
        return result
    runtime.retry_budget.record_request(runtime.clock())
    request_line = b"%s %%s HTTP/1.1\r\n" % method.encode("ascii")
    framing = body.framing_header()
    tried: list[TargetRuntime] = []
    last_error: UpstreamError | None = None
    while True:
        target = runtime.choose(hash_key, exclude=tried)
        if target is None:
            return await _answer_problem(scope, receive, send, result, *_problem_for(last_error))
        result.attempts += 1
        result.target_url = target.url
        origin = target.origin
        head = b"".join(
            (
                request_line % (origin.base_path.encode("ascii") + path),
                header_lines,
                b"" if has_host else b"host: %s\r\n" % origin.host_header,
                framing,
                b"\r\n",
            )
        )
        runtime.begin(target)
        try:
            outcome = await _attempt(
                scope,
                receive,
                send,
                runtime,
                target,
                head,
                body,
                timeouts,
                retries,
                result,
                response_headers_hook,
            )
        finally:
            runtime.end(target)  # also when cancelled: in-flight counts must not leak
        if isinstance(outcome, ForwardResult):
            return outcome
        tried.append(target)
        last_error = outcome.error


@dataclass(slots=True)
class _Retry:
    """An attempt failed in a way the retry policy and budget allow to try again."""

    error: UpstreamError | None


async def _attempt(
    scope: Scope,
    receive: Receive,
    send: Send,
    runtime: UpstreamRuntime,
    target: TargetRuntime,
    head: bytes,
    body: _RequestBody,
    timeouts: Timeouts,
    retries: RetryPolicy,
    result: ForwardResult,
    response_headers_hook: ResponseHeadersHook | None,
) -> ForwardResult | _Retry:
    """One try on ``target``: the relayed (or answered) result, or :class:`_Retry`."""
    method: str = scope["method"]
    started = time.perf_counter()
    try:
        connection, response = await _exchange(target, head, body, method, timeouts, result)
    except ClientDisconnected:
        result.status = CLIENT_CLOSED_REQUEST
        return result
    except UpstreamError as error:
        runtime.record(target, is_failure=True)
        result.upstream_seconds = time.perf_counter() - started
        condition = _retry_condition(error)
        if condition is not None and _may_retry_now(
            runtime, retries, condition, method, result, body
        ):
            return _Retry(error)
        return await _answer_problem(scope, receive, send, result, *_problem_for(error))
    result.upstream_seconds = time.perf_counter() - started
    status_condition = _FAILURE_STATUSES.get(response.status)
    runtime.record(target, is_failure=status_condition is not None)
    if status_condition is not None and _may_retry_now(
        runtime, retries, status_condition, method, result, body
    ):
        target.connections.release(connection)  # closed: its response was not read
        return _Retry(None)
    await _relay_response(
        scope,
        receive,
        send,
        target,
        connection,
        response,
        timeouts,
        result,
        response_headers_hook,
    )
    return result


def _may_retry_now(
    runtime: UpstreamRuntime,
    retries: RetryPolicy,
    condition: RetryCondition,
    method: str,
    result: ForwardResult,
    body: _RequestBody,
) -> bool:
    return may_retry(
        retries,
        condition=condition,
        method=method,
        attempts_made=result.attempts,
        is_body_replayable=body.is_replayable,
    ) and runtime.retry_budget.try_spend(retries, runtime.clock())


async def _exchange(
    target: TargetRuntime,
    head: bytes,
    body: _RequestBody,
    method: str,
    timeouts: Timeouts,
    result: ForwardResult,
) -> tuple[UpstreamConnection, ResponseHead]:
    """Send the request on a pooled connection and read the response head. On failure the
    connection is closed and its slot given back."""
    pool = target.connections
    connection = await pool.acquire(timeouts.connect_seconds)
    try:
        try:
            return connection, await _send_and_read_head(
                connection, head, body, method, timeouts, result
            )
        except BadResponse as error:
            if not (connection.is_reused and error.before_any_byte and body.is_replayable):
                raise
            # The target closed the idle keep-alive connection as the request went out (its
            # keep-alive timeout raced ours): nothing was processed, so any method may be
            # sent again, once, on a new connection. Not a retry in the policy's sense.
            connection.close()
            connection = await pool.open_fresh(timeouts.connect_seconds)
            return connection, await _send_and_read_head(
                connection, head, body, method, timeouts, result
            )
    except BaseException:
        pool.release(connection)
        raise


async def _send_and_read_head(
    connection: UpstreamConnection,
    head: bytes,
    body: _RequestBody,
    method: str,
    timeouts: Timeouts,
    result: ForwardResult,
) -> ResponseHead:
    connection.begin(is_head_request=method == "HEAD")
    if body.buffered and not body.is_chunked:
        # A small body read whole goes out with the head: one send, not two.
        connection.write_all([head, *body.buffered])
        await connection.drain(timeouts.write_seconds)
        result.bytes_in = sum(len(chunk) for chunk in body.buffered)
    else:
        connection.write(head)
        if body.has_body:
            result.bytes_in = await body.send(connection, timeouts.write_seconds)
    connection.is_request_complete = True
    return await connection.read_head(timeouts.read_seconds)


async def _relay_response(
    scope: Scope,
    receive: Receive,
    send: Send,
    target: TargetRuntime,
    connection: UpstreamConnection,
    response: ResponseHead,
    timeouts: Timeouts,
    result: ForwardResult,
    response_headers_hook: ResponseHeadersHook | None,
) -> None:
    """Send the response head, then the body chunk by chunk as it arrives."""
    headers = downstream_response_headers(response.headers)
    if response_headers_hook is not None:
        headers = response_headers_hook(response.status, headers)
    result.status = response.status
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    watcher: asyncio.Task[None] | None = None
    try:
        while True:
            chunk, is_last = await connection.read_body(timeouts.read_seconds)
            if not is_last and watcher is None:
                # A body still coming (a large download, an event stream): the server's send
                # ignores a gone client, so watch for the disconnect and stop reading then.
                watcher = asyncio.create_task(_close_on_disconnect(receive, connection))
            result.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": not is_last})
            if is_last:
                break
    except UpstreamError as error:
        if watcher is not None and watcher.done():
            return  # the client left; closing the upstream connection ended the read
        raise UpstreamResponseAborted(
            f"the upstream failed mid-response: {error}", result
        ) from None
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        # Back to the pool if the body was read to its end, closed otherwise.
        target.connections.release(connection)


async def _close_on_disconnect(receive: Receive, connection: UpstreamConnection) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            connection.close()
            return

"""Real servers for the forwarding engine's tests: upstreams, and the proxy in front of them.

- :func:`serve` runs any ASGI app under uvicorn on a free port of 127.0.0.1 (in this loop).
- :func:`serve_on_listener` runs an ASGI app on the proxy's own listener
  (``keel.gateway.proxy.listener``), as ``keel serve`` serves the gateway's proxy.
- :func:`proxy_app` is the smallest gateway: every request of every path goes to one pool,
  as the integrator's app will after matching a route.
- :class:`RawUpstream` is an HTTP server written on bare asyncio for what uvicorn will not
  do: count accepted connections, answer ``Connection: close``, send a malformed response,
  or a body that is neither length-delimited nor chunked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.gateway.proxy.forward import ForwardResult, forward
from keel.gateway.proxy.runtime import UpstreamRuntime
from keel.gateway.proxy.websocket import forward_websocket
from keel_client.edge._upstreams import (
    RetryPolicy,
    Timeouts,
    UpstreamPool,
    UpstreamTarget,
)
from tests.support.keel_process import free_port


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, **config: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free port until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_config=None,
            timeout_graceful_shutdown=1,
            **config,
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        await task
        raise RuntimeError(f"uvicorn did not start on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_on_listener(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` on the proxy's own HTTP/1.1 listener, on a free port; yields its base URL."""
    from keel.gateway.proxy_app import ProxyServer

    server = ProxyServer(app, f"127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.listener.port}"
    finally:
        await server.stop()


def pool_of(*urls: str | UpstreamTarget, **settings: Any) -> UpstreamPool:
    targets = [url if isinstance(url, UpstreamTarget) else UpstreamTarget(url=url) for url in urls]
    return UpstreamPool(name="test-pool", targets=targets, **settings)


@dataclass
class ProxyLog:
    """What the test proxy's ``forward`` calls returned (or raised)."""

    results: list[ForwardResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def proxy_app(
    runtime: UpstreamRuntime,
    *,
    timeouts: Timeouts | None = None,
    retries: RetryPolicy | None = None,
    hash_key: Callable[[Scope], str | None] = lambda scope: None,
    log: ProxyLog | None = None,
) -> ASGIApp:
    """Everything to ``runtime``'s pool, the path unchanged, the client's headers but Host."""
    timeouts = timeouts or Timeouts(connect_seconds=2, read_seconds=5, write_seconds=5)
    retries = retries if retries is not None else RetryPolicy()
    log = log if log is not None else ProxyLog()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(runtime, receive, send)
            return
        path = scope["raw_path"].decode("ascii")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("ascii")
        headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
        if scope["type"] == "websocket":
            await forward_websocket(
                scope,
                receive,
                send,
                runtime=runtime,
                upstream_path=path,
                request_headers=headers,
                timeouts=timeouts,
                hash_key=hash_key(scope),
            )
            return
        try:
            result = await forward(
                scope,
                receive,
                send,
                runtime=runtime,
                upstream_path=path,
                request_headers=headers,
                timeouts=timeouts,
                retries=retries,
                hash_key=hash_key(scope),
                response_headers_hook=None,
            )
        except BaseException as exc:
            log.errors.append(exc)
            raise
        log.results.append(result)

    return app


async def _lifespan(runtime: UpstreamRuntime, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await runtime.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await runtime.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


@contextlib.asynccontextmanager
async def proxied(pool: UpstreamPool, **options: Any) -> AsyncIterator[tuple[str, UpstreamRuntime]]:
    """A started runtime for ``pool`` and the test proxy in front of it: (base URL, runtime)."""
    runtime = UpstreamRuntime(pool)
    await runtime.start()
    try:
        # On the listener the gateway's proxy is served by (its WebSocket upgrades handed to
        # uvicorn's protocol), so every forwarding test goes through it.
        async with serve_on_listener(proxy_app(runtime, **options)) as url:
            yield url, runtime
    finally:
        await runtime.stop()


# -- a raw HTTP/1.1 upstream ----------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None


Responder = Callable[[RawRequest], Awaitable[bytes | None]]


class _RequestReader:
    """httptools callbacks collecting one request at a time."""

    def __init__(self) -> None:
        self.done: list[RawRequest] = []
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append(RawRequest("", self._url.decode(), self._headers, b"".join(self._body)))
        self._url, self._headers, self._body = b"", [], []


class RawUpstream:
    """An HTTP/1.1 server on bare asyncio; ``responder`` returns the raw bytes to answer each
    request with (``None``: close without answering)."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.accepted = 0
        self.requests: list[RawRequest] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        collector = _RequestReader()
        parser = httptools.HttpRequestParser(collector)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                parser.feed_data(data)
                while collector.done:
                    request = collector.done.pop(0)
                    request.method = parser.get_method().decode()
                    self.requests.append(request)
                    answer = await self.responder(request)
                    if answer is None:
                        return
                    writer.write(answer)
                    await writer.drain()
                    if b"connection: close" in answer.lower():
                        return
        except (ConnectionError, httptools.HttpParserError):
            return
        finally:
            writer.close()


def respond(status: int = 200, body: bytes = b"ok", headers: str = "") -> Responder:
    """A responder answering every request the same way, with a Content-Length."""

    async def responder(request: RawRequest) -> bytes:
        extra = "".join(f"{line}\r\n" for line in headers.split("\n") if line)
        return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body

    return responder

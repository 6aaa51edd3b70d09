"""The proxy's own HTTP/1.1 listener (``keel.gateway.proxy.listener``) spoken to byte by byte:
keep-alive, pipelining, ``Expect: 100-continue``, HTTP/1.0, bodies that stream in either
direction, malformed requests (400 problem+json), an upstream that dies, a WebSocket
upgrade handed over, and stopping with connections open. The forwarding tests of this
directory run on the same listener (``servers.proxied``)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httptools
import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect

from keel.gateway.proxy.listener import ProxyListener
from keel.gateway.proxy.runtime import UpstreamRuntime
from keel.settings import Settings
from tests.support.keel_process import free_port

from .servers import RawUpstream, pool_of, proxied, proxy_app, serve, serve_on_listener


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers JSON: the method, path, query, body size and headers it got."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo " + str(message.get("text"))})
        await send({"type": "websocket.close", "code": 1000})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "size": size,
            "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)

    def json(self) -> dict[str, object]:
        return json.loads(bytes(self.body))  # type: ignore[no-any-return]


class _Collector:
    """httptools callbacks collecting whole answers."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.current = Answer()
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.current.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.answers.append(self.current)
        self.current = Answer()


class RawClient:
    """One TCP connection, written to and read from byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.collector = _Collector()
        self.parser = httptools.HttpResponseParser(self.collector)
        self.collector.parser = self.parser
        self.taken = 0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, count: int, timeout: float = 5.0) -> list[Answer]:
        """The next ``count`` complete answers."""
        async with asyncio.timeout(timeout):
            while len(self.collector.answers) < self.taken + count:
                data = await self.reader.read(65536)
                assert data, "the connection closed before the answers came"
                self.parser.feed_data(data)
        got = self.collector.answers[self.taken : self.taken + count]
        self.taken += count
        return got

    async def is_closed(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(65536) == b""

    def close(self) -> None:
        self.writer.close()


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: proxy.test", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def _open(url: str) -> RawClient:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    return RawClient(reader, writer)


async def test_keep_alive_serves_requests_one_after_another_on_one_connection() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            for number in range(3):
                await client.send(_head("GET", f"/one/{number}?n={number}"))
                (answer,) = await client.answers(1)
                assert answer.status == 200
                assert answer.json()["path"] == f"/one/{number}"
                assert answer.json()["query"] == f"n={number}"
                assert answer.headers[b"content-length"] == str(len(answer.body)).encode()
                assert b"connection" not in answer.headers
        finally:
            client.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(
                b"".join(
                    [
                        _head("GET", "/first"),
                        _head("POST", "/second", "content-length: 5") + b"hello",
                        _head("GET", "/third"),
                    ]
                )
            )
            answers = await client.answers(3)
        finally:
            client.close()
    assert [answer.json()["path"] for answer in answers] == ["/first", "/second", "/third"]
    assert answers[1].json()["size"] == 5


async def test_a_malformed_request_is_answered_400_problem_json_and_closed() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET /a HTTP/1.1\r\nbad header\r\n\r\n"):
            client = await _open(url)
            try:
                await client.send(garbage)
                (answer,) = await client.answers(1)
                assert answer.status == 400
                assert answer.headers[b"content-type"] == b"application/problem+json"
                assert json.loads(bytes(answer.body))["status"] == 400
                assert answer.headers[b"connection"] == b"close"
                assert await client.is_closed()
            finally:
                client.close()


async def test_a_head_over_the_limit_is_answered_431_problem_json_and_closed() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        for head in (
            _head("GET", "/big", *(f"x-filler-{n}: {'v' * 1000}" for n in range(40))),
            _head("GET", "/big", f"x-one-long-line: {'v' * 100_000}"),
        ):
            client = await _open(url)
            try:
                await client.send(head)
                (answer,) = await client.answers(1)
                assert answer.status == 431
                assert answer.headers[b"content-type"] == b"application/problem+json"
                assert await client.is_closed()
            finally:
                client.close()
        client = await _open(url)  # a head under the limit still passes
        try:
            await client.send(_head("GET", "/small", f"x-filler: {'v' * 20_000}"))
            (answer,) = await client.answers(1)
            assert answer.status == 200
        finally:
            client.close()


async def test_http_1_0_is_answered_and_closed() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(b"GET /old HTTP/1.0\r\nhost: proxy.test\r\n\r\n")
            (answer,) = await client.answers(1)
            assert answer.json()["path"] == "/old"
            assert await client.is_closed()
        finally:
            client.close()

    async def unsized(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two"})

    # An answer of unknown length: no chunked coding for HTTP/1.0, the close ends it.
    async with serve(unsized) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(b"GET /old HTTP/1.0\r\n\r\n")
            received = b""
            async with asyncio.timeout(5):
                while chunk := await client.reader.read(65536):
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            assert b"transfer-encoding" not in head.lower()
            assert body == b"part one part two"
        finally:
            client.close()


async def test_a_large_body_streams_through_and_the_connection_stays_usable() -> None:
    size = 5 * 1024 * 1024 + 17  # far above the listener's 64 KiB of unread body
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(_head("PUT", "/big", f"content-length: {size}"))
            block = b"x" * 65536
            sent = 0
            while sent < size:
                part = block[: size - sent]
                await client.send(part)
                sent += len(part)
            (answer,) = await client.answers(1, timeout=30)
            assert answer.json()["size"] == size
            # a chunked body, on the same connection
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b"ab", b"cde"))
            await client.send(
                _head("POST", "/chunked", "transfer-encoding: chunked") + chunks + b"0\r\n\r\n"
            )
            (answer,) = await client.answers(1)
            assert answer.json()["size"] == 5
            assert answer.json()["path"] == "/chunked"
        finally:
            client.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with serve(echo) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(_head("POST", "/ask", "content-length: 4", "expect: 100-continue"))
            async with asyncio.timeout(5):
                interim = await client.reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 ")
            await client.send(b"body")
            (answer,) = await client.answers(1)
            assert answer.status == 200
            assert answer.json()["size"] == 4
        finally:
            client.close()


async def test_a_streamed_answer_goes_out_chunked_as_it_comes() -> None:
    release = asyncio.Event()

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n"})

    async with serve(stream) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(_head("GET", "/events"))
            async with asyncio.timeout(5):
                first = b""
                while b"data: 1" not in first:
                    first += await client.reader.read(65536)
            assert b"transfer-encoding: chunked" in first.lower()
            assert b"data: 2" not in first
            release.set()
            async with asyncio.timeout(5):
                rest = b""
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += await client.reader.read(65536)
            assert b"data: 2" in rest
        finally:
            client.close()


async def test_a_head_whose_body_is_not_there_yet_is_sent_without_waiting_for_it() -> None:
    release = asyncio.Event()

    async def quiet_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await release.wait()  # an event stream with nothing to say yet
        await send({"type": "http.response.body", "body": b"data: late\n\n"})

    async with serve(quiet_stream) as upstream, proxied(pool_of(upstream)) as (url, _):
        client = await _open(url)
        try:
            await client.send(_head("GET", "/quiet"))
            async with asyncio.timeout(5):
                head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            release.set()
            async with asyncio.timeout(5):
                rest = b""
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += await client.reader.read(65536)
            assert b"data: late" in rest
        finally:
            client.close()


async def test_an_upstream_dying_mid_answer_aborts_the_client_connection() -> None:
    async def half_then_close(request: object) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nonly part"

    async with (
        RawUpstream(half_then_close) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
    ):
        client = await _open(url)
        try:
            await client.send(_head("GET", "/dies"))
            received = b""
            async with asyncio.timeout(5):
                while chunk := await client.reader.read(65536):
                    received += chunk
            # The head and the part that came went out; the rest never will, and the
            # connection is gone rather than left waiting: no complete answer was parsed.
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.endswith(b"only part")
            client.parser.feed_data(received)
            assert client.collector.answers == []
        finally:
            client.close()


async def test_an_unreachable_upstream_is_502_problem_json_on_a_connection_kept_open() -> None:
    async with RawUpstream(lambda request: asyncio.sleep(0)) as gone:
        dead = gone.url  # closed when the block ends: nothing listens there afterwards
    async with proxied(pool_of(dead)) as (url, _):
        client = await _open(url)
        try:
            statuses = []
            for _ in range(2):
                await client.send(_head("GET", "/nobody"))
                (answer,) = await client.answers(1)
                statuses.append(answer.status)
                assert answer.headers[b"content-type"] == b"application/problem+json"
            # refused, then (the target ejected) no target left: both on one connection
            assert statuses == [502, 503]
        finally:
            client.close()


async def test_a_websocket_upgrade_is_handed_to_uvicorns_websocket_protocol() -> None:
    async with (
        serve(echo) as upstream,
        proxied(pool_of(upstream)) as (url, _),
        connect(url.replace("http://", "ws://") + "/socket") as socket,
    ):
        await socket.send("hi")
        assert await socket.recv() == "echo hi"


async def test_stopping_closes_idle_connections_and_lets_an_answer_finish() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with serve(slow) as upstream:
        runtime = UpstreamRuntime(pool_of(upstream))
        await runtime.start()
        try:
            listening = serve_on_listener(proxy_app(runtime))
            url = await listening.__aenter__()
            idle = await _open(url)
            busy = await _open(url)
            await busy.send(_head("GET", "/slow"))
            await asyncio.sleep(0.2)
            stopping = asyncio.create_task(listening.__aexit__(None, None, None))
            assert await idle.is_closed()
            release.set()
            (answer,) = await busy.answers(1)
            assert bytes(answer.body) == b"done"
            assert answer.headers[b"connection"] == b"close"
            await stopping
            idle.close()
            busy.close()
        finally:
            await runtime.stop()


async def test_an_idle_connection_is_closed_after_the_keep_alive_time() -> None:
    async with serve(echo) as upstream:
        runtime = UpstreamRuntime(pool_of(upstream))
        await runtime.start()
        listener = ProxyListener(
            proxy_app(runtime), "127.0.0.1", free_port(), ws_config=None, keep_alive_seconds=0.5
        )
        await listener.start()
        try:
            client = await _open(f"http://127.0.0.1:{listener.port}")
            await client.send(_head("GET", "/once"))
            (answer,) = await client.answers(1)
            assert answer.status == 200
            started = time.monotonic()
            assert await client.is_closed(timeout=5)
            assert 0.3 < time.monotonic() - started < 3
            client.close()
        finally:
            await listener.stop()
            await runtime.stop()


async def test_proxies_in_several_processes_share_a_port_only_with_reuse_port() -> None:
    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    port = free_port()
    first = ProxyListener(hello, "127.0.0.1", port, ws_config=None, reuse_port=True)
    second = ProxyListener(hello, "127.0.0.1", port, ws_config=None, reuse_port=True)
    alone = ProxyListener(hello, "127.0.0.1", port, ws_config=None)
    await first.start()
    try:
        await second.start()
        with pytest.raises(OSError, match="address already in use"):
            await alone.start()  # without the option a taken port still fails the start
        async with httpx.AsyncClient() as client:
            for _ in range(4):
                assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hi"
    finally:
        await second.stop()
        await first.stop()


def test_reuse_port_needs_redis_for_shared_rate_limits() -> None:
    with pytest.raises(ValidationError, match="PROXY_REUSE_PORT needs KEEL_REDIS_URL"):
        Settings(gateway={"proxy_listen": "127.0.0.1:8080", "proxy_reuse_port": True})
    settings = Settings(
        redis_url="redis://127.0.0.1:6379/0",
        gateway={"proxy_listen": "127.0.0.1:8080", "proxy_reuse_port": True},
    )
    assert settings.gateway.proxy_reuse_port

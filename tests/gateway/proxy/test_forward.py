"""``forward`` through a real proxy (uvicorn) to real upstreams: headers, framing, streaming,
connection reuse, and the problems it answers when the upstream misbehaves."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from keel_client.edge._upstreams import Timeouts

from .servers import RawRequest, RawUpstream, pool_of, proxied, respond, serve

PROBLEM = "application/problem+json"


async def test_hop_by_hop_headers_are_removed_and_forwarding_headers_added() -> None:
    async with (
        RawUpstream(
            respond(headers="connection: x-internal\nx-internal: secret\nkeep-alive: timeout=5")
        ) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.get(
            url + "/a?b=1",
            headers={
                "connection": "keep-alive, x-hop",
                "x-hop": "must not pass",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "proxy-authorization": "Basic eDp5",
                "x-forwarded-for": "10.1.2.3",
                "x-end-to-end": "kept",
            },
        )
    assert response.status_code == 200
    assert "x-internal" not in response.headers
    assert "keep-alive" not in response.headers
    (seen,) = upstream.requests
    assert seen.path == "/a?b=1"
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert seen.header(hop) is None, hop
    assert seen.header("x-end-to-end") == "kept"
    assert seen.header("x-forwarded-for") == "10.1.2.3, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == url.removeprefix("http://")
    assert seen.header("host") == f"127.0.0.1:{upstream.port}"


async def test_a_keep_alive_connection_is_reused() -> None:
    async with (
        RawUpstream(respond(body=b"hello")) as upstream,
        proxied(pool_of(upstream.url)) as (url, runtime),
        httpx.AsyncClient() as client,
    ):
        bodies = [(await client.get(url + f"/{n}")).text for n in range(5)]
    assert bodies == ["hello"] * 5
    assert upstream.accepted == 1
    assert runtime.connections_opened == 1


async def test_connection_close_from_the_upstream_is_honoured() -> None:
    async with (
        RawUpstream(respond(body=b"bye", headers="connection: close")) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        responses = [await client.get(url + "/") for _ in range(3)]
    assert [r.text for r in responses] == ["bye"] * 3
    assert all("connection" not in r.headers for r in responses)
    assert upstream.accepted == 3


async def test_chunked_response_is_relayed() -> None:
    async def chunked(request: RawRequest) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    async with (
        RawUpstream(chunked) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        first = await client.get(url + "/")
        second = await client.get(url + "/")
    assert first.text == second.text == "hello world"
    assert upstream.accepted == 1


async def test_body_delimited_by_close_is_relayed_whole() -> None:
    async def until_close(request: RawRequest) -> bytes:
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"x" * 100_000

    async with (
        RawUpstream(until_close) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.get(url + "/")
    assert response.status_code == 200
    assert response.content == b"x" * 100_000


async def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    async def by_path(request: RawRequest) -> bytes:
        if request.method == "HEAD":  # the length of the body a GET would get, no body
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
        if request.path == "/empty":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if request.path == "/cached":
            return b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n'
        return b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"

    async with (
        RawUpstream(by_path) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        head = await client.head(url + "/thing")
        empty = await client.get(url + "/empty")
        cached = await client.get(url + "/cached", headers={"if-none-match": '"v1"'})
        after = await client.get(url + "/thing")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "1234", b"")
    assert (empty.status_code, empty.content) == (204, b"")
    assert (cached.status_code, cached.headers["etag"], cached.content) == (304, '"v1"', b"")
    assert after.text == "body"  # the connection was still in step after HEAD/204/304
    assert upstream.accepted == 1


async def test_interim_100_continue_from_the_upstream_is_skipped() -> None:
    async def with_continue(request: RawRequest) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"

    async with (
        RawUpstream(with_continue) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.post(url + "/", content=b"data")
    assert (response.status_code, response.text) == (201, "ok")
    assert upstream.requests[0].body == b"data"


async def test_malformed_upstream_response_is_a_502_problem() -> None:
    async def garbage(request: RawRequest) -> bytes:
        return b"SPDY/9 banana\r\n\r\n"

    async with (
        RawUpstream(garbage) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.get(url + "/")
    assert response.status_code == 502
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:keel:problem:bad-gateway"


async def test_upstream_closing_without_an_answer_is_a_502_problem() -> None:
    async def hang_up(request: RawRequest) -> None:
        return None

    async with (
        RawUpstream(hang_up) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.post(url + "/", content=b"x")
    assert response.status_code == 502
    assert response.json()["type"] == "urn:keel:problem:bad-gateway"


async def test_upstream_too_slow_is_a_504_problem() -> None:
    async def slow(request: RawRequest) -> bytes:
        await asyncio.sleep(2)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    timeouts = Timeouts(connect_seconds=1, read_seconds=0.3, write_seconds=1)
    async with (
        RawUpstream(slow) as upstream,
        proxied(pool_of(upstream.url), timeouts=timeouts) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.post(url + "/")
    assert response.status_code == 504
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:keel:problem:gateway-timeout"


async def test_upstream_failing_mid_body_aborts_the_client_connection() -> None:
    async def short_body(request: RawRequest) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nonly ten b"

    async with (
        RawUpstream(short_body) as upstream,
        proxied(pool_of(upstream.url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        try:
            response = await client.get(url + "/")
        except httpx.RemoteProtocolError:
            response = None
    # The 200 had started: never a complete-looking response with a truncated body.
    assert response is None or len(response.content) < 100


async def test_request_body_is_streamed_upstream_before_the_client_finished() -> None:
    first_chunk_arrived = asyncio.Event()
    received: list[bytes] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if chunk := message.get("body", b""):
                received.append(chunk)
                first_chunk_arrived.set()
            if not message.get("more_body"):
                break
        body = str(sum(map(len, received))).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def body() -> object:
        yield b"a" * 1000
        # Waits for the upstream to have the first chunk: a proxy that buffered the body
        # would never send it, and the wait would time out.
        await asyncio.wait_for(first_chunk_arrived.wait(), 30)
        yield b"b" * 1000

    async with (
        serve(counting) as upstream_url,
        proxied(pool_of(upstream_url)) as (url, _),
        httpx.AsyncClient() as client,
    ):
        response = await client.post(url + "/upload", content=body())  # type: ignore[arg-type]
    assert response.text == "2000"


async def test_server_sent_events_reach_the_client_before_the_stream_ends() -> None:
    client_has_first_event = asyncio.Event()

    async def events(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await asyncio.wait_for(client_has_first_event.wait(), 30)
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})

    lines: list[str] = []
    async with (
        serve(events) as upstream_url,
        proxied(pool_of(upstream_url)) as (url, _),
        httpx.AsyncClient() as client,
        client.stream("GET", url + "/events") as response,
    ):
        async for line in response.aiter_lines():
            lines.append(line)
            if line == "data: one":
                client_has_first_event.set()
    assert response.headers["content-type"] == "text/event-stream"
    assert [line for line in lines if line] == ["data: one", "data: two"]

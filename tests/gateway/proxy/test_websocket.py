"""WebSockets through the proxy: messages both ways, the subprotocol, and close codes."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.keel_process import free_port

from .servers import pool_of, proxied, serve


class EchoUpstream:
    """Echoes text and bytes; ``close-me`` makes it close with 4001 "bye"; records the code
    the client closed with and the headers of the handshake."""

    def __init__(self) -> None:
        self.client_close_code: int | None = None
        self.closed = asyncio.Event()
        self.headers: dict[bytes, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        self.headers = dict(scope["headers"])
        await receive()  # websocket.connect
        offered = scope.get("subprotocols") or []
        chosen = "superchat" if "superchat" in offered else None
        await send({"type": "websocket.accept", "subprotocol": chosen})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.client_close_code = message.get("code")
                self.closed.set()
                return
            if message.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo " + message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


async def test_messages_are_relayed_both_ways_with_the_subprotocol() -> None:
    upstream = EchoUpstream()
    async with serve(upstream) as upstream_url, proxied(pool_of(upstream_url)) as (url, _):
        ws_url = url.replace("http://", "ws://") + "/socket"
        async with connect(ws_url, subprotocols=["chat", "superchat"]) as socket:  # type: ignore[list-item]
            assert socket.subprotocol == "superchat"
            await socket.send("hello")
            assert await socket.recv() == "echo hello"
            await socket.send(b"\x01\x02\x03")
            assert await socket.recv() == b"\x03\x02\x01"
    assert upstream.headers[b"x-forwarded-for"] == b"127.0.0.1"


async def test_upstream_close_code_reaches_the_client() -> None:
    upstream = EchoUpstream()
    async with (
        serve(upstream) as upstream_url,
        proxied(pool_of(upstream_url)) as (url, _),
        connect(url.replace("http://", "ws://") + "/socket") as socket,
    ):
        await socket.send("close-me")
        with pytest.raises(ConnectionClosed):
            await socket.recv()
        assert socket.close_code == 4001
        assert socket.close_reason == "bye"


async def test_client_close_code_reaches_the_upstream() -> None:
    upstream = EchoUpstream()
    async with serve(upstream) as upstream_url, proxied(pool_of(upstream_url)) as (url, _):
        async with connect(url.replace("http://", "ws://") + "/socket") as socket:
            await socket.send("hi")
            await socket.recv()
            await socket.close(4002, "done")
        await asyncio.wait_for(upstream.closed.wait(), 30)
    assert upstream.client_close_code == 4002


async def test_unreachable_websocket_upstream_is_refused() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with proxied(pool_of(dead)) as (url, _):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url.replace("http://", "ws://") + "/socket"):
                pass
    response = refused.value.response
    assert response.status_code == 502  # uvicorn supports the ASGI WebSocket denial response
    assert json.loads(response.body)["type"] == "urn:keel:problem:bad-gateway"

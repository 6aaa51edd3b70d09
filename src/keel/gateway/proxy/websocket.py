"""Forwarding a WebSocket: :func:`forward_websocket` relays messages between the client (ASGI)
and a target (the ``websockets`` library's asyncio client), both ways, until one side closes.

The handshake goes upstream first: the client is accepted only once the target accepted,
with the subprotocol the target chose, so a client never talks to a socket with nobody
behind it. A target that refuses or cannot be reached is answered with a 502/503
problem+json when the server supports the ASGI WebSocket denial response, else with a close
before accept (a 403 from the server). Close codes pass through in both directions: a target
closing with 4001 closes the client with 4001, and the client's code reaches the target.

Messages are relayed whole (the ``websockets`` client reassembles fragments), each side
bounded by :data:`MAX_MESSAGE_BYTES`, the ASGI server's default limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from keel.core.errors import problem_response
from keel_client.edge._upstreams import Timeouts

from .forward import HOP_BY_HOP_HEADERS, ForwardResult, connection_tokens
from .runtime import UpstreamRuntime

#: The largest message relayed (uvicorn's ``--ws-max-size`` default).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: Handshake headers the ``websockets`` client writes itself for the upstream leg.
_HANDSHAKE_HEADERS: Final = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
#: Codes that must never be sent in a close frame (RFC 6455 §7.4.1), and what to send instead.
_UNSENDABLE_CLOSE_CODES: Final = {1005: 1000, 1006: 1011, 1015: 1011}


def _upstream_headers(
    scope: Scope, request_headers: list[tuple[bytes, bytes]]
) -> list[tuple[str, str]]:
    dropped = HOP_BY_HOP_HEADERS | _HANDSHAKE_HEADERS | connection_tokens(request_headers)
    headers: list[tuple[str, str]] = []
    forwarded_for: list[str] = []
    for name, value in request_headers:
        lowered = name.lower()
        if lowered == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
        if lowered not in dropped:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    client = scope.get("client")
    if client:
        forwarded_for.append(client[0])
    if forwarded_for:
        headers.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    headers.append(("X-Forwarded-Proto", "https" if scope.get("scheme") == "wss" else "http"))
    for name, value in scope["headers"]:
        if name == b"host":
            headers.append(("X-Forwarded-Host", value.decode("latin-1")))
            break
    return headers


async def forward_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    runtime: UpstreamRuntime,
    upstream_path: str,
    request_headers: list[tuple[bytes, bytes]],
    timeouts: Timeouts,
    hash_key: str | None,
) -> ForwardResult:
    """Relay a WebSocket between the client and a target of ``runtime``'s pool until one
    side closes. ``upstream_path`` is the path (and query) after the route's rewrite."""
    result = ForwardResult()
    message = await receive()
    if message["type"] != "websocket.connect":
        return result  # the client left before the handshake
    target = runtime.choose(hash_key)
    if target is None:
        await _deny(scope, send, result, 503, "upstream-unavailable", "Upstream unavailable")
        return result
    origin = target.origin
    scheme = "wss" if origin.is_tls else "ws"
    url = f"{scheme}://{origin.host_header.decode()}{origin.target_path(upstream_path)}"
    result.attempts = 1
    result.target_url = target.url
    runtime.begin(target)
    try:
        try:
            upstream = await connect(
                url,
                additional_headers=_upstream_headers(scope, request_headers),
                subprotocols=scope.get("subprotocols") or None,
                open_timeout=timeouts.connect_seconds,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,
                user_agent_header=None,
                ssl=runtime.ssl_context if origin.is_tls else None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI):
            runtime.record(target, is_failure=True)
            await _deny(scope, send, result, 502, "bad-gateway", "Bad gateway")
            return result
        runtime.record(target, is_failure=False)
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            result.status = 101
            await _relay(receive, send, upstream, result)
    finally:
        runtime.end(target)
    return result


async def _deny(
    scope: Scope, send: Send, result: ForwardResult, status: int, slug: str, title: str
) -> None:
    result.status = status
    result.problem = slug
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1011})
        return
    response = problem_response(
        status=status, slug=slug, title=title, detail="The WebSocket upstream is unavailable."
    )
    await send(
        {"type": "websocket.http.response.start", "status": status, "headers": response.raw_headers}
    )
    await send({"type": "websocket.http.response.body", "body": response.body})


async def _relay(
    receive: Receive, send: Send, upstream: ClientConnection, result: ForwardResult
) -> None:
    to_upstream = asyncio.create_task(_client_to_upstream(receive, upstream, result))
    to_client = asyncio.create_task(_upstream_to_client(send, upstream, result))
    try:
        done, _ = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_upstream in done:
            # The client closed (and the target was told): let the target's close finish.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(to_client), timeout=5)
        for task in done:
            task.result()  # surface a bug rather than swallow it
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        for task in (to_upstream, to_client):
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task


async def _client_to_upstream(
    receive: Receive, upstream: ClientConnection, result: ForwardResult
) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            result.bytes_in += len(data)
            try:
                await upstream.send(data)
            except ConnectionClosed:
                return  # the target is closing; its close reaches the client
        elif message["type"] == "websocket.disconnect":
            code = int(message.get("code", 1000))
            await upstream.close(
                _UNSENDABLE_CLOSE_CODES.get(code, code), str(message.get("reason") or "")
            )
            return


async def _upstream_to_client(
    send: Send, upstream: ClientConnection, result: ForwardResult
) -> None:
    try:
        async for data in upstream:
            result.bytes_out += len(data)
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed:
        pass  # closed without a clean close frame: handled below as 1006
    code = upstream.close_code if upstream.close_code is not None else 1006
    with contextlib.suppress(RuntimeError, OSError):  # the client may be gone already
        await send(
            {
                "type": "websocket.close",
                "code": _UNSENDABLE_CLOSE_CODES.get(code, code),
                "reason": upstream.close_reason or "",
            }
        )

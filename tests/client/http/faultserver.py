"""A fault-injecting HTTP server on 127.0.0.1 for the base client's tests.

Two listeners run in one background thread with its own event loop:

- ``url``: uvicorn serving a Starlette app whose endpoints inject latency, 5xx bursts (fail N
  times per test key, then succeed), 429 with ``Retry-After``, problem+json errors, slow
  bodies, an OAuth2 token endpoint, ETag/Last-Modified resources, redirects, and an RFC 9421
  signature check done with ``SignatureVerifier`` (the receiving side).
- ``raw_url``: a bare asyncio server that resets connections (TCP RST) N times per key, which
  no ASGI app can do.

Every endpoint counts its hits per key in ``FaultServer.hits`` (same process, so tests read
the counters directly).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keel_client.http import RetryPolicy, SignatureVerificationError, SignatureVerifier

#: Backoff small enough that a test with retries against this server takes milliseconds.
FAST_RETRY = RetryPolicy(max_retries=3, backoff_base=0.005, backoff_max=0.02)
SIGNING_KEYS = {"test-key": b"a-shared-secret-of-32-bytes-long"}
CLIENT_ID = "svc-billing"
CLIENT_SECRET = "s3cret/with:odd chars"


class FaultServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        #: Request headers of each hit, per key (lower-case names).
        self.seen: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
        self.tokens_issued: Counter[str] = Counter()
        self.cache_answers: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.verifier = SignatureVerifier(SIGNING_KEYS)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.raw_port = 0

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def raw_url(self) -> str:
        return f"http://127.0.0.1:{self.raw_port}"

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this: without it Nagle holds the body behind the headers
        # until the client's delayed ACK, adding 40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_level="warning", lifespan="off", access_log=False, http="h11"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        raw = await asyncio.start_server(self._raw_connection, "127.0.0.1", 0)
        self.raw_port = raw.sockets[0].getsockname()[1]
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        self._ready.set()
        await self._stop.wait()
        server.should_exit = True
        raw.close()
        await serving

    def count(self, key: str, request: Request | None = None) -> int:
        with self._lock:
            self.hits[key] += 1
            if request is not None:
                self.seen[key].append({k.lower(): v for k, v in request.headers.items()})
            return self.hits[key]

    # -- raw listener: connection resets ------------------------------------------------
    async def _raw_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        target = head.split(b" ", 2)[1].decode()
        parts = urlsplit(target)
        key = parts.path.rsplit("/", 1)[-1]
        fail = int(parse_qs(parts.query).get("fail", ["0"])[0])
        hit = self.count(f"raw:{key}")
        if hit <= fail:
            # SO_LINGER with a zero timeout turns close() into a TCP RST.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        body = b'{"ok": true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    # -- the ASGI app ---------------------------------------------------------------------
    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(
            routes=[
                Route("/ok", self.ok, methods=methods),
                Route("/echo", self.echo, methods=methods),
                Route("/delay/{key}", self.delay),
                Route("/flaky/{key}", self.flaky, methods=methods),
                Route("/outage/{key}", self.outage, methods=methods),
                Route("/retry-after/{key}", self.retry_after),
                Route("/problem/{status:int}", self.problem, methods=methods),
                Route("/slow-body/{key}", self.slow_body),
                Route("/token/{key}", self.token, methods=["POST"]),
                Route("/protected/{key}", self.protected),
                Route("/etag/{key}", self.etag),
                Route("/last-modified/{key}", self.last_modified),
                Route("/redirect", self.redirect, methods=methods),
                Route("/loop", self.loop),
                Route("/signed", self.signed, methods=methods),
                Route("/invoice", self.invoice),
            ]
        )

    async def ok(self, request: Request) -> Response:
        self.count("ok")
        return JSONResponse({"ok": True})

    async def echo(self, request: Request) -> Response:
        self.count("echo", request)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "url": str(request.url),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
        )

    async def delay(self, request: Request) -> Response:
        key = request.path_params["key"]
        self.count(key, request)
        await asyncio.sleep(float(request.query_params.get("seconds", "1")))
        return JSONResponse({"ok": True})

    async def flaky(self, request: Request) -> Response:
        key = request.path_params["key"]
        hit = self.count(key, request)
        fail = int(request.query_params.get("fail", "1"))
        status = int(request.query_params.get("status", "503"))
        if hit <= fail:
            return JSONResponse({"hit": hit}, status_code=status)
        return JSONResponse({"hit": hit})

    async def outage(self, request: Request) -> Response:
        self.count(request.path_params["key"], request)
        return JSONResponse({"down": True}, status_code=503)

    async def retry_after(self, request: Request) -> Response:
        key = request.path_params["key"]
        hit = self.count(key, request)
        after = int(request.query_params.get("after", "1"))
        if hit <= int(request.query_params.get("fail", "1")):
            if request.query_params.get("form") == "date":
                value = email.utils.formatdate(time.time() + after, usegmt=True)
            else:
                value = str(after)
            return JSONResponse({"slow": "down"}, status_code=429, headers={"Retry-After": value})
        return JSONResponse({"hit": hit, "at": time.time()})

    async def problem(self, request: Request) -> Response:
        status = request.path_params["status"]
        self.count(f"problem:{status}", request)
        return JSONResponse(
            {
                "type": "https://keel.dev/problems/invoice-not-found",
                "title": "Invoice not found",
                "status": status,
                "detail": "No invoice 42 in tenant default.",
                "instance": "/invoices/42",
                "code": "invoice_not_found",
                "request_id": request.headers.get("x-request-id"),
                "invoice_id": "42",
            },
            status_code=status,
            media_type="application/problem+json",
        )

    async def slow_body(self, request: Request) -> Response:
        self.count(request.path_params["key"], request)
        chunks = int(request.query_params.get("chunks", "10"))
        interval = float(request.query_params.get("interval", "0.2"))

        async def trickle() -> Any:
            for _ in range(chunks):
                yield b"x" * 10
                await asyncio.sleep(interval)

        return StreamingResponse(trickle(), media_type="application/octet-stream")

    async def token(self, request: Request) -> Response:
        key = request.path_params["key"]
        form = {
            name: values[0] for name, values in parse_qs((await request.body()).decode()).items()
        }
        if self._client_credentials(request) != (CLIENT_ID, CLIENT_SECRET):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        # A slow token endpoint widens the window in which concurrent callers pile up.
        await asyncio.sleep(float(request.query_params.get("latency", "0.05")))
        with self._lock:
            self.tokens_issued[key] += 1
            number = self.tokens_issued[key]
        return JSONResponse(
            {
                "access_token": f"{key}-token-{number}",
                "token_type": "Bearer",
                "expires_in": int(request.query_params.get("expires_in", "3600")),
            }
        )

    @staticmethod
    def _client_credentials(request: Request) -> tuple[str, str] | None:
        # RFC 6749 section 2.3.1: Basic credentials are form-urlencoded before base64.
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme != "Basic":
            return None
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        return unquote_plus(client_id), unquote_plus(secret)

    async def protected(self, request: Request) -> Response:
        key = request.path_params["key"]
        self.count(key, request)
        current = f"Bearer {key}-token-{self.tokens_issued[key]}"
        if request.headers.get("authorization") != current:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"token": current})

    async def etag(self, request: Request) -> Response:
        key = request.path_params["key"]
        self.count(key, request)
        tag = '"v1"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == tag:
            self.cache_answers[key][304] += 1
            return Response(status_code=304, headers=headers)
        self.cache_answers[key][200] += 1
        return JSONResponse({"version": 1}, headers=headers)

    async def last_modified(self, request: Request) -> Response:
        key = request.path_params["key"]
        self.count(key, request)
        stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
        headers = {"Last-Modified": stamp, "Cache-Control": "max-age=0, must-revalidate"}
        if request.headers.get("if-modified-since") == stamp:
            self.cache_answers[key][304] += 1
            return Response(status_code=304, headers=headers)
        self.cache_answers[key][200] += 1
        return JSONResponse({"version": 1}, headers=headers)

    async def redirect(self, request: Request) -> Response:
        self.count("redirect", request)
        status = int(request.query_params.get("status", "302"))
        return Response(status_code=status, headers={"Location": request.query_params["to"]})

    async def loop(self, request: Request) -> Response:
        self.count("loop")
        return Response(status_code=302, headers={"Location": "/loop"})

    async def signed(self, request: Request) -> Response:
        self.count("signed", request)
        try:
            verified = self.verifier.verify(
                method=request.method,
                url=str(request.url),
                headers=request.headers.items(),
                body=await request.body(),
            )
        except SignatureVerificationError as error:
            return JSONResponse(
                {"title": "Invalid signature", "status": 401, "detail": error.detail},
                status_code=401,
                media_type="application/problem+json",
            )
        return JSONResponse(
            {"key_id": verified.key_id, "covered": list(verified.covered_components)}
        )

    async def invoice(self, request: Request) -> Response:
        self.count("invoice")
        if request.query_params.get("broken"):
            return JSONResponse({"id": "42", "amount": "not a number"})
        return JSONResponse({"id": "42", "amount": 1250, "currency": "EUR"})

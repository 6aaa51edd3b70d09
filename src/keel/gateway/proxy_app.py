"""The gateway's proxy: an ASGI app enforcing the tenant's edge policy in front of its pools.

::

    request ─ request id (X-Request-ID kept when sane, else made) ──────────────────────────┐
      └─ EdgeEnforcer.check (keel_client.edge: the code services run too)                   │
           ├─ refused ─▶ problem+json (+ the route's security headers, CORS, RateLimit) ◀──┤
           └─ allowed ─▶ the route's pool (or a version rule's) ─▶ UpstreamRuntime         │
                ├─ GET/HEAD with caching on: ResponseCache (fresh: answered here; stale:  │
                │   revalidated upstream; a 304 refreshes the stored response)             │
                ├─ headers: the route's transform, Keel-Identity (signed), X-Request-ID    │
                ├─ forward() / forward_websocket() (keel.gateway.proxy)                    │
                └─ response headers: transform, profile, CORS, RateLimit, X-Request-ID ◀──┘

It is served on its own listener (``KEEL_GATEWAY__PROXY_LISTEN``), apart from Keel's API, by
its own HTTP/1.1 listener inside the same process and event loop (:class:`ProxyServer`,
:mod:`keel.gateway.proxy.listener`). Pools are
rebuilt when the policy changes; an unchanged pool keeps its runtime (its connections, its
health and breaker state), so a route edit does not eject a target nobody touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import Message, Receive, Scope, Send

from keel.core.logging import get_logger
from keel.gateway.enforcement import GatewayEnforcement
from keel.gateway.proxy.balancer import hash_key_of
from keel.gateway.proxy.cache import LookupKind, ResponseCache, is_invalidating
from keel.gateway.proxy.forward import UpstreamResponseAborted, forward
from keel.gateway.proxy.runtime import UpstreamRuntime
from keel.gateway.proxy.websocket import forward_websocket
from keel_client.edge._enforce import BodyTooLarge, Refusal, Verdict, problem
from keel_client.edge._model import EdgePolicy, Route
from keel_client.edge._upstreams import UpstreamPool

log = get_logger("keel.gateway.proxy")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: ``header_for(principal, audience) -> header value``: the signed caller identity.
IdentitySource = Callable[[Any, str], Any]


class ProxyMetrics:
    """``keel_gateway_requests_total{route,status}`` and
    ``keel_gateway_request_seconds{route}`` (routes are the policy's names, a bounded set;
    ``-`` for a request no route took)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "keel_gateway_requests_total",
            "Requests through the gateway's proxy, by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "keel_gateway_request_seconds",
            "Time to answer a request through the proxy, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        # The labelled children, kept: ``labels()`` takes a lock and builds its key on every
        # call (measured: 6 of the ~10 µs a request spent on these metrics). Route names and
        # statuses are bounded sets, and Prometheus keeps every child anyway.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request by route and status and time it by route."""
        counter = self._counted.get((route, status))
        if counter is None:
            counter = self._counted[(route, status)] = self.requests.labels(route, str(status))
        histogram = self._timed.get(route)
        if histogram is None:
            histogram = self._timed[route] = self.seconds.labels(route)
        counter.inc()
        histogram.observe(seconds)


class GatewayProxy:
    """The proxy's ASGI app. ``identity`` mints the ``Keel-Identity`` header an upstream
    verifies (``None``: none is sent, the client's is still dropped)."""

    def __init__(
        self,
        enforcement: GatewayEnforcement,
        *,
        identity: Any | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.enforcement = enforcement
        self.identity = identity
        self.metrics = metrics
        self.runtimes: dict[str, UpstreamRuntime] = {}
        self.caches: dict[str, tuple[Route, ResponseCache]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        enforcement.on_change(self._policy_changed)

    async def start(self) -> None:
        self._policy_changed(self.enforcement.policy)

    async def stop(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.stop()
        self.runtimes.clear()
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _policy_changed(self, policy: EdgePolicy) -> None:
        """Build the pools the policy has; keep the runtimes of pools that did not change."""
        pools: dict[str, UpstreamPool] = {pool.name: pool for pool in policy.upstreams}
        runtimes: dict[str, UpstreamRuntime] = {}
        for name, pool in pools.items():
            existing = self.runtimes.get(name)
            if existing is not None and existing.pool == pool:
                runtimes[name] = existing
                continue
            runtime = UpstreamRuntime(pool)
            runtimes[name] = runtime
            self._spawn(runtime.start())
        for name, runtime in self.runtimes.items():
            if runtimes.get(name) is not runtime:
                self._spawn(runtime.stop())
        self.runtimes = runtimes
        caches: dict[str, tuple[Route, ResponseCache]] = {}
        for route in policy.routes:
            if not route.cache.enabled:
                continue
            kept = self.caches.get(route.name)
            same = kept is not None and kept[0].cache == route.cache
            caches[route.name] = (
                (route, kept[1]) if kept and same else (route, ResponseCache(route.cache))
            )
        self.caches = caches

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # -- one request -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        enforcer = self.enforcement.enforcer
        verdict = await enforcer.check(scope, receive)
        route_name = verdict.match.route.name if verdict.match is not None else "-"
        status = 0
        try:
            if verdict.refusal is not None:
                status = verdict.refusal.status
                await self._refuse(scope, send, verdict, verdict.refusal, request_id)
                return
            status = await self._proxy(scope, send, verdict, request_id)
        finally:
            if self.metrics is not None:
                self.metrics.observe(route_name, status, time.perf_counter() - started)

    async def _refuse(
        self, scope: Scope, send: Send, verdict: Verdict, refusal: Refusal, request_id: bytes
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = list(refusal.headers)
        if verdict.plan is not None:
            # A preflight's answer already holds its CORS fields (as the SDK middleware's).
            headers = verdict.plan.finish(
                headers, Verdict(), _origin(scope), cors=not refusal.is_preflight
            )
        headers.append((REQUEST_ID_HEADER, request_id))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": refusal.body})

    async def _proxy(self, scope: Scope, send: Send, verdict: Verdict, request_id: bytes) -> int:
        match, plan = verdict.match, verdict.plan
        assert match is not None
        assert plan is not None
        assert verdict.receive is not None
        route = match.route
        pool_name = _pool_for(route, verdict.request_headers)
        runtime = self.runtimes.get(pool_name) if pool_name is not None else None
        if runtime is None:
            refusal = problem(404, "not-found", "Not found", "No upstream serves this route.")
            await self._refuse(scope, send, verdict, refusal, request_id)
            return 404
        # The target's own Host goes upstream (X-Forwarded-Host carries the client's), and
        # the request id is the one this proxy settled on.
        headers = [
            (name, value)
            for name, value in verdict.request_headers
            if name != b"host" and name != REQUEST_ID_HEADER
        ]
        headers.append((REQUEST_ID_HEADER, request_id))
        principal = verdict.principal
        if principal is not None and self.identity is not None:
            value = await self.identity.header_for(principal, f"gateway:{pool_name}")
            headers.append((b"keel-identity", value))
        query = scope.get("query_string", b"")
        upstream_path = match.upstream_path + ("?" + query.decode("latin-1") if query else "")
        hash_key = None
        if runtime.pool.balance == "consistent_hash":
            hash_key = hash_key_of(
                runtime.pool.hash_on,
                client_ip=self.enforcement.enforcer.client_address(scope),
                principal=principal.subject if principal is not None else None,
                path=scope["path"],
                headers=scope["headers"],
            )
        origin = _origin(scope)

        def finish(
            status: int, response_headers: list[tuple[bytes, bytes]]
        ) -> list[tuple[bytes, bytes]]:
            finished = plan.finish(response_headers, verdict, origin)
            finished.append((REQUEST_ID_HEADER, request_id))
            return finished

        if scope["type"] == "websocket":
            result = await forward_websocket(
                scope,
                verdict.receive,
                send,
                runtime=runtime,
                upstream_path=upstream_path,
                request_headers=headers,
                timeouts=route.timeouts,
                hash_key=hash_key,
            )
            return result.status or 101

        cached = self.caches.get(route.name)
        if cached is not None and scope["method"] in ("GET", "HEAD"):
            return await self._through_cache(
                cached[1], scope, verdict, send, runtime, upstream_path, headers, hash_key, finish
            )
        sent = _SendTracker(send)
        try:
            result = await forward(
                scope,
                verdict.receive,
                sent,
                runtime=runtime,
                upstream_path=upstream_path,
                request_headers=headers,
                timeouts=route.timeouts,
                retries=route.retries,
                hash_key=hash_key,
                response_headers_hook=finish,
            )
        except BodyTooLarge as error:
            if sent.started:
                raise
            await self._refuse(scope, send, verdict, error.refusal(), request_id)
            return 413
        except UpstreamResponseAborted as aborted:
            return aborted.result.status
        if cached is None and self.caches and is_invalidating(scope["method"], result.status):
            self._invalidate(scope)
        return result.status

    def _invalidate(self, scope: Scope) -> None:
        key = _cache_key(scope)
        for _, cache in self.caches.values():
            cache.invalidate(key)

    async def _through_cache(
        self,
        cache: ResponseCache,
        scope: Scope,
        verdict: Verdict,
        send: Send,
        runtime: UpstreamRuntime,
        upstream_path: str,
        headers: list[tuple[bytes, bytes]],
        hash_key: str | None,
        finish: Callable[[int, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
    ) -> int:
        """RFC 9111 for a GET or HEAD: answer fresh copies here, revalidate stale ones, store
        what may be stored (see ``keel.gateway.proxy.cache``)."""
        assert verdict.match is not None
        assert verdict.receive is not None
        route = verdict.match.route
        method: str = scope["method"]
        key = _cache_key(scope)
        authorized = verdict.principal is not None
        lookup = cache.lookup(method, key, scope["headers"], authorized=authorized)
        if lookup.kind in (LookupKind.FRESH, LookupKind.ONLY_IF_CACHED_MISS) or lookup.not_modified:
            if lookup.kind == LookupKind.ONLY_IF_CACHED_MISS:
                refusal = problem(
                    504, "gateway-timeout", "Not cached", "The response is not cached."
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 504,
                        "headers": finish(504, list(refusal.headers)),
                    }
                )
                await send({"type": "http.response.body", "body": refusal.body})
                return 504
            response = lookup.response
            assert response is not None
            status = 304 if lookup.not_modified else response.status
            body = b"" if status == 304 or method == "HEAD" else response.body
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": finish(status, list(response.headers)),
                }
            )
            await send({"type": "http.response.body", "body": body})
            return status
        if lookup.kind == LookupKind.STALE:
            headers = lookup.upstream_headers(headers)
        capture = _Capture(
            send,
            finish,
            cache_max=route.cache.max_body_bytes,
            hold_304=lookup.kind == LookupKind.STALE,
        )
        requested_at = time.time()  # the cache's own clock (its default)
        try:
            result = await forward(
                scope,
                verdict.receive,
                capture,
                runtime=runtime,
                upstream_path=upstream_path,
                request_headers=headers,
                timeouts=route.timeouts,
                retries=route.retries,
                hash_key=hash_key,
                response_headers_hook=capture.hook,
            )
        except UpstreamResponseAborted as aborted:
            return aborted.result.status
        if capture.held_304 is not None:
            refreshed = cache.revalidated(key, lookup, capture.held_304)
            if refreshed is None:  # the 304 named another version: ask again, unconditionally
                plain = _SendTracker(send)
                again = await forward(
                    scope,
                    verdict.receive,
                    plain,
                    runtime=runtime,
                    upstream_path=upstream_path,
                    request_headers=verdict.request_headers,
                    timeouts=route.timeouts,
                    retries=route.retries,
                    hash_key=hash_key,
                    response_headers_hook=finish,
                )
                return again.status
            body = b"" if method == "HEAD" else refreshed.body
            await send(
                {
                    "type": "http.response.start",
                    "status": refreshed.status,
                    "headers": finish(refreshed.status, list(refreshed.headers)),
                }
            )
            await send({"type": "http.response.body", "body": body})
            return refreshed.status
        if (
            method == "GET"
            and capture.upstream_headers is not None
            and capture.body is not None
            and cache.store_decision(
                method,
                key,
                scope["headers"],
                result.status,
                capture.upstream_headers,
                authorized=authorized,
            )
        ):
            cache.store(
                key,
                scope["headers"],
                result.status,
                capture.upstream_headers,
                bytes(capture.body),
                requested_at=requested_at,
            )
        return result.status


class _SendTracker:
    """``send`` noting whether the response has started."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class _Capture:
    """``send`` and header hook keeping the upstream's headers and (up to ``cache_max``
    bytes) its body for the cache; with ``hold_304`` a 304 of a revalidation is held back,
    the stored response being sent instead."""

    def __init__(
        self,
        send: Send,
        finish: Callable[..., list[tuple[bytes, bytes]]],
        *,
        cache_max: int,
        hold_304: bool,
    ) -> None:
        self.send = send
        self.finish = finish
        self.cache_max = cache_max
        self.hold_304 = hold_304
        self.upstream_headers: list[tuple[bytes, bytes]] | None = None
        self.body: bytearray | None = bytearray()
        self.held_304: list[tuple[bytes, bytes]] | None = None

    def hook(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        self.upstream_headers = list(headers)
        if status == 304 and self.hold_304:
            self.held_304 = list(headers)
        return self.finish(status, headers)

    async def __call__(self, message: Message) -> None:
        if self.held_304 is not None:
            return
        if message["type"] == "http.response.body" and self.body is not None:
            self.body.extend(message.get("body", b""))
            if len(self.body) > self.cache_max:
                self.body = None
        await self.send(message)


def _pool_for(route: Route, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The route's pool, or a version rule's: a header match first, then the weights."""
    if not route.versions:
        return route.upstream
    roll = None
    for rule in route.versions:
        if rule.header is not None:
            name = rule.header.encode()
            if any(key == name and value.decode("latin-1") == rule.value for key, value in headers):
                return rule.upstream
    for rule in route.versions:
        if rule.weight is not None:
            if roll is None:
                roll = random.uniform(0, 100)  # noqa: S311 - traffic splitting, not security
            if roll < rule.weight:
                return rule.upstream
            roll -= rule.weight
    return route.upstream


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.match(value):
                return bytes(value)
            break
    # 32 random hex digits, as uuid4().hex gave, without building a UUID object (measured:
    # 1.7 µs instead of 8 µs a request on the benchmark machine).
    return secrets.token_hex(16).encode()


def _origin(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return bytes(value)
    return None


def _cache_key(scope: Scope) -> str:
    host = b""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
            break
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (
        f"{scope.get('scheme', 'http')}://{host.decode('latin-1').lower()}{raw.decode('latin-1')}"
        + ("?" + query.decode("latin-1") if query else "")
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class ProxyServer:
    """The proxy's listener in this process's event loop: Keel's own HTTP/1.1 protocol
    (:mod:`keel.gateway.proxy.listener`), WebSocket upgrades handed to uvicorn's
    ``websockets-sansio`` protocol. Keel's own server keeps the process's signal handling."""

    def __init__(
        self,
        app: GatewayProxy,
        listen: str,
        *,
        reuse_port: bool = False,
        max_head_bytes: int | None = None,
    ) -> None:
        import uvicorn

        from keel.gateway.proxy.listener import ProxyListener

        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        # Only for the WebSocket connections the listener hands over (their limits, pings).
        self.config = uvicorn.Config(
            app,
            host=host,
            port=int(port),
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            server_header=False,
            date_header=False,
            # The client address is the peer's: X-Forwarded-For is read by the enforcer, and
            # only as far as KEEL_GATEWAY__FORWARDED_HOPS trusts it.
            proxy_headers=False,
        )
        self.config.load()
        self.listener = ProxyListener(
            app,
            host,
            int(port),
            ws_config=self.config,
            reuse_port=reuse_port,
            **({"max_head_bytes": max_head_bytes} if max_head_bytes is not None else {}),
        )

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()

"""``EdgeMiddleware``: the gateway's policy enforced inside a service (pure ASGI).

A service behind no gateway gets the same checks the gateway makes, from the same code
(:class:`~keel_client.edge._enforce.EdgeEnforcer`): the routes that point at it, their
authentication, rate limits, CORS, security headers, size limits and SSRF rules. A request
no route takes goes through untouched, except that an identity header a client sent
(``Keel-Identity``) is dropped, so the app never reads a forged one. Until a policy is
loaded (from Keel or the local copy) every request is answered 503: the routes' rules are
unknown, and letting requests through unchecked would open what they protect.

The policy comes from a source kept current by Keel's change stream (``EdgeClient``); the
enforcer is rebuilt when its revision changes, between requests, never during one.
The authenticated caller is put where ``keel_client.fastapi``'s ``require_auth`` finds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from keel_client.edge._enforce import (
    BodyTooLarge,
    EdgeAuthenticator,
    EdgeEnforcer,
    Refusal,
    Verdict,
    problem,
)
from keel_client.edge._model import EdgePolicy
from keel_client.edge._ratelimit import LimiterStore
from keel_client.http._ssrf import SSRFPolicy

__all__ = ["EdgeMiddleware", "PolicySource", "send_refusal"]

log = logging.getLogger("keel_client.edge")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long after a failed start of the policy source the next request tries again.
START_RETRY_SECONDS = 5.0
#: The answer while no policy could be loaded: the routes' rules cannot be known, so no
#: request is let through unchecked.
NO_POLICY = problem(
    503,
    "unavailable",
    "Service unavailable",
    "The edge policy could not be loaded from Keel or a local copy yet.",
    [(b"retry-after", b"5")],
)

#: Where the authenticated principal is kept in the ASGI scope (``keel_client.fastapi``
#: reads it there).
PRINCIPAL_SCOPE_KEY = "keel.principal"


class PolicySnapshot(Protocol):
    @property
    def revision(self) -> int: ...

    @property
    def policy(self) -> EdgePolicy: ...


class PolicySource(Protocol):
    """Where the middleware reads the current policy: ``EdgeClient`` is one."""

    @property
    def snapshot(self) -> PolicySnapshot | None: ...

    async def start(self) -> Any: ...


async def send_refusal(
    send: Send,
    refusal: Refusal,
    finish: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]] | None = None,
) -> None:
    headers = list(refusal.headers)
    if finish is not None:
        headers = finish(headers)
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body})


class EdgeMiddleware:
    """Enforces the routes of ``source`` on every HTTP request of ``app``.

    Example (what ``keel_client.fastapi.use_keel_edge`` sets up)::

        edge = keel.edge.client(service="orders")
        app.add_middleware(
            EdgeMiddleware, source=edge, authenticator=authenticator,
            limiter=RedisLimiterStore(redis), tenant_id=None,
        )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        source: PolicySource,
        authenticator: EdgeAuthenticator | None,
        limiter: LimiterStore,
        tenant_id: str | None = None,
        forwarded_hops: int = 0,
        ssrf: SSRFPolicy | None = None,
    ) -> None:
        self.app = app
        self.source = source
        self.authenticator = authenticator
        self.limiter = limiter
        self.tenant_id = tenant_id
        self.forwarded_hops = forwarded_hops
        self.ssrf = ssrf
        self._enforcer: tuple[int, EdgeEnforcer] | None = None
        self._started: asyncio.Future[Any] | None = None
        self._ready = False
        self._retry_at = 0.0

    async def _current(self) -> EdgeEnforcer | None:
        if not self._ready:
            # Started by the first request (a middleware has no start-up hook of its own);
            # requests meanwhile wait for the same start. A failed start (Keel away and no
            # local copy) is tried again at most every START_RETRY_SECONDS; meanwhile
            # requests are refused (fail closed: the routes cannot be known).
            now = time.monotonic()
            if self._started is None and now >= self._retry_at:
                self._started = asyncio.ensure_future(self.source.start())
            if self._started is None:
                return None
            try:
                await asyncio.shield(self._started)
            except Exception as error:
                if self._started is not None:
                    log.warning("edge: no policy (%s); requests refused 503", type(error).__name__)
                    self._started = None
                    self._retry_at = time.monotonic() + START_RETRY_SECONDS
                return None
            self._ready = True
        snapshot = self.source.snapshot
        if snapshot is None:
            return None
        cached = self._enforcer
        if cached is None or cached[0] != snapshot.revision:
            enforcer = EdgeEnforcer(
                snapshot.policy,
                authenticator=self.authenticator,
                limiter=self.limiter,
                # The policy's own tenant unless one is given: a caller of another tenant
                # never passes a service's routes.
                tenant_id=self.tenant_id or getattr(snapshot, "tenant_id", None),
                service_view=True,
                forwarded_hops=self.forwarded_hops,
                ssrf=self.ssrf,
                pass_unrouted=True,
            )
            cached = self._enforcer = (snapshot.revision, enforcer)
        return cached[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        enforcer = await self._current()
        if enforcer is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1013})
                return
            await send_refusal(send, NO_POLICY)
            return
        verdict = await enforcer.check(scope, receive)
        origin = _origin(scope)
        if verdict.refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            plan = verdict.plan
            refusal = verdict.refusal
            await send_refusal(
                send,
                refusal,
                None
                if plan is None
                else lambda headers: plan.finish(
                    headers, Verdict(), origin, cors=not refusal.is_preflight
                ),
            )
            return
        scope = dict(scope)
        scope["headers"] = verdict.request_headers
        if verdict.principal is not None:
            scope[PRINCIPAL_SCOPE_KEY] = verdict.principal
        if verdict.plan is None:
            await self.app(scope, receive, send)
            return
        await self._call_with_policy(scope, receive, send, verdict, origin)

    async def _call_with_policy(
        self, scope: Scope, receive: Receive, send: Send, verdict: Verdict, origin: bytes | None
    ) -> None:
        plan = verdict.plan
        receive_limited = verdict.receive
        assert plan is not None
        assert receive_limited is not None
        started = False
        too_large: BodyTooLarge | None = None

        async def guarded_receive() -> Message:
            # Raising from receive would reach the app's own error handling (a 500 sent
            # before this middleware could answer); a disconnect ends its reading instead,
            # and whatever it answers then is dropped for the 413.
            nonlocal too_large
            try:
                return dict(await receive_limited())
            except BodyTooLarge as error:
                too_large = error
                return {"type": "http.disconnect"}

        async def finishing_send(message: Message) -> None:
            nonlocal started
            if too_large is not None and not started:
                return
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                message["headers"] = plan.finish(list(message.get("headers", [])), verdict, origin)
            await send(message)

        try:
            await self.app(scope, guarded_receive, finishing_send)
        except Exception:
            if too_large is None or started:
                raise
        if too_large is not None and not started:
            await send_refusal(
                send, too_large.refusal(), lambda headers: plan.finish(headers, verdict, origin)
            )


def _origin(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return value  # type: ignore[no-any-return]
    return None

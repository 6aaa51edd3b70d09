"""Helpers of the SDK secrets tests: transports that count what the SDK sends, a clock the
test moves, and members of a tenant holding one policy.

The async client talks to the app through ``httpx.ASGITransport``. The sync client (what a
settings class uses) runs in a worker thread; ``LoopBridgeTransport`` hands its requests to
the same ASGI app on the test's event loop, so the sync face is tested against the same real
Keel as the async one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
from fastapi import FastAPI

from tests.support.tenants import TenantAdmin, create_api_key, create_role, create_user

BASE_URL = "http://keel.test"
DATA = "/secrets/v1/secret/data"


class CountingTransport(httpx.AsyncBaseTransport):
    """The in-process app, counting requests per ``(method, path)`` and the most in flight;
    ``delays`` holds an answer back that many seconds, as a slow network would."""

    def __init__(self, app: FastAPI) -> None:
        self._app = httpx.ASGITransport(app=app)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.delays: dict[tuple[str, str], float] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    def reads(self, path: str) -> int:
        return self.requests[("GET", f"{DATA}/{path}")]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests[(request.method, request.url.path)] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            response = await self._app.handle_async_request(request)
            await asyncio.sleep(self.delays.get((request.method, request.url.path), 0.0))
            return response
        finally:
            self.in_flight -= 1


class LoopBridgeTransport(httpx.BaseTransport):
    """A sync transport for a worker thread: each request is served by the ASGI app on
    ``loop`` (the test's), and the thread waits for the answer."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._app = httpx.ASGITransport(app=app)
        self._loop = loop
        self.requests: Counter[tuple[str, str]] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests[(request.method, request.url.path)] += 1
        body = request.read()

        async def send() -> httpx.Response:
            forwarded = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=body,
                extensions=request.extensions,
            )
            answer = await self._app.handle_async_request(forwarded)
            content = await answer.aread()
            return httpx.Response(answer.status_code, headers=answer.headers, content=content)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout=30)


class Clock:
    """A monotonic clock the test can move forward."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def put_policy(app: FastAPI, admin: TenantAdmin, name: str, hcl: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        answer = await http.put(
            f"/secrets/v1/sys/policies/acl/{name}",
            headers={"X-Vault-Token": admin.api_key},
            json={"policy": hcl},
        )
    assert answer.status_code == 204, answer.text


async def member(app: FastAPI, admin: TenantAdmin, hcl: str) -> str:
    """The API key of a new user of the tenant whose one role holds one policy, ``hcl``."""
    policy = f"p-{uuid.uuid4().hex[:8]}"
    await put_policy(app, admin, policy, hcl)
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, [f"secrets:policy:{policy}"])
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return str(key)

"""The base of the HTTP providers' servers: requests recorded, failures injected."""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response

from tests.support.asgi import serve_over_tcp

# --------------------------------------------------------------------------------------
# HTTP servers


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Failure:
    status: int
    retry_after: float | None
    code: str | int | None
    message: str


class HttpTestServer(ABC):
    """What every provider's HTTP server shares: recording, planned failures, serving.

    Subclasses answer success in :meth:`accept` and write errors in their provider's format
    in :meth:`error_response`.
    """

    messages: list[Any]
    """What the provider accepted, parsed (each server says in what form)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[ReceivedRequest] = []
        self._failures: list[Failure] = []
        self._stalls: list[float] = []

    def reset(self) -> None:
        """Forget what was received and planned, for a server shared by several tests."""
        self.requests.clear()
        self._failures.clear()
        self._stalls.clear()
        self.messages.clear()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        code: str | int | None = None,
        message: str = "planned failure",
    ) -> None:
        """Answer the next ``n`` sends with ``status`` (and ``Retry-After``), the error
        body in the provider's format naming ``code``."""
        self._failures.extend(Failure(status, retry_after, code, message) for _ in range(n))

    def stall_next(self, n: int = 1, *, seconds: float = 1.0) -> None:
        """Hold the next ``n`` answers for ``seconds``: a provider that is too slow."""
        self._stalls.extend(seconds for _ in range(n))

    def can_fail(self, request: ReceivedRequest) -> bool:
        """Whether a planned failure applies to this request (not to a token request)."""
        return True

    @abstractmethod
    async def accept(self, request: ReceivedRequest) -> Response:
        """The provider's answer to a request it accepts (each server's own)."""

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        return Response(message, status_code=status, media_type="text/plain")

    async def _dispatch(self, request: ReceivedRequest) -> Response:
        self.requests.append(request)
        if self._stalls and self.can_fail(request):
            await asyncio.sleep(self._stalls.pop(0))
        if self._failures and self.can_fail(request):
            failure = self._failures.pop(0)
            response = self.error_response(failure.status, failure.code, failure.message)
            if failure.retry_after is not None:
                response.headers["Retry-After"] = str(int(failure.retry_after))
            return response
        return await self.accept(request)

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
        async def receive(request: Request) -> Response:
            received = ReceivedRequest(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers={name.lower(): value for name, value in request.headers.items()},
                body=await request.body(),
            )
            return await self._dispatch(received)

        return app


@asynccontextmanager
async def serving(server: HttpTestServer) -> AsyncIterator[None]:
    async with serve_over_tcp(server.app()) as url:
        server.url = url
        yield


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body), status_code=status, media_type="application/json", headers=headers
    )

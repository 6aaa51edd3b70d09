"""HTTP conventions of every Keel API: request IDs, the body size limit, the last-resort 500."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.http import RequestContextMiddleware
from keel.core.metrics import Metrics
from keel.settings import Settings
from tests.support.asgi import asgi_request, serve

LIMIT = 1024  # sqlite_settings.max_body_bytes
SECRET_MESSAGE = "connection to db failed: password=hunter2-top-secret"

router = APIRouter()


class Note(BaseModel):
    text: str


@router.post("/echo-length")
async def echo_length(request: Request) -> dict[str, int]:
    body = await request.body()
    request.app.state.bodies_accepted += 1
    return {"length": len(body)}


@router.post("/notes")
async def create_note(note: Note, request: Request) -> dict[str, int]:
    request.app.state.bodies_accepted += 1
    return {"length": len(note.text)}


@router.get("/request-id")
async def request_id_seen_by_logs() -> dict[str, object]:
    return {"bound": structlog.contextvars.get_contextvars().get("request_id")}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError(SECRET_MESSAGE)


@pytest.fixture
def app(sqlite_settings: Settings) -> FastAPI:
    application = create_app(sqlite_settings)
    application.include_router(router)
    application.state.bodies_accepted = 0
    return application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as http:
        yield http


class TestRequestId:
    async def test_request_without_id_gets_a_generated_one_echoed(
        self, client: httpx.AsyncClient
    ) -> None:
        first = await client.get("/request-id")
        second = await client.get("/request-id")
        assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
        assert first.headers["x-request-id"] != second.headers["x-request-id"]

    async def test_safe_caller_request_id_is_echoed_and_bound_for_logs(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/request-id", headers={"X-Request-ID": "svc-a:42.retry_1"})
        assert response.headers["x-request-id"] == "svc-a:42.retry_1"
        assert response.json() == {"bound": "svc-a:42.retry_1"}

    @pytest.mark.parametrize(
        "unsafe",
        ["has space", "x" * 129, "inject\\u000dline", 'quote"s', "<script>"],
        ids=["space", "too-long", "escape", "quote", "markup"],
    )
    async def test_unsafe_caller_request_id_is_replaced(
        self, client: httpx.AsyncClient, unsafe: str
    ) -> None:
        response = await client.get("/request-id", headers={"X-Request-ID": unsafe})
        generated = response.headers["x-request-id"]
        assert generated != unsafe
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert response.json() == {"bound": generated}

    async def test_problem_body_carries_the_request_id(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/missing", headers={"X-Request-ID": "trace-7"})
        assert response.json()["request_id"] == "trace-7"
        assert response.headers["x-request-id"] == "trace-7"


class TestBodySizeLimit:
    async def test_body_at_the_limit_is_accepted(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/echo-length", content=b"x" * LIMIT)
        assert response.status_code == 200
        assert response.json() == {"length": LIMIT}

    async def test_declared_length_over_the_limit_is_refused_before_the_body_is_read(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        response = await client.post("/echo-length", content=b"x" * (LIMIT + 1))
        assert response.status_code == 413
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.json()["type"] == "urn:keel:problem:payload-too-large"
        assert response.json()["request_id"] == response.headers["x-request-id"]
        assert app.state.bodies_accepted == 0

    @pytest.mark.parametrize("path", ["/echo-length", "/notes"])
    async def test_chunked_body_without_length_over_the_limit_is_refused(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"text": "'
            for _ in range(8):
                yield b"y" * 256
            yield b'"}'

        request = client.build_request(
            "POST", path, content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in request.headers
        response = await client.send(request)
        assert response.status_code == 413
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.json()["type"] == "urn:keel:problem:payload-too-large"

    @pytest.mark.parametrize("path", ["/echo-length", "/notes"])
    async def test_lying_content_length_does_not_get_a_larger_body_past_the_limit(
        self, app: FastAPI, client: httpx.AsyncClient, path: str
    ) -> None:
        body = b'{"text": "' + b"z" * (LIMIT * 4) + b'"}'
        response = await asgi_request(
            app,
            "POST",
            path,
            headers=[("content-type", "application/json"), ("content-length", "20")],
            chunks=[body[:512], body[512:]],
        )
        assert response.status == 413
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.json()["type"] == "urn:keel:problem:payload-too-large"
        assert app.state.bodies_accepted == 0


class TestLastResortErrorHandler:
    async def test_unexpected_exception_becomes_a_bare_internal_problem(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
        assert response.status_code == 500
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.headers["x-request-id"] == "req-500"
        body = response.json()
        assert body["type"] == "urn:keel:problem:internal"
        assert body["request_id"] == "req-500"
        for leaked in ("hunter2", "password", "RuntimeError", "Traceback", "test_http.py"):
            assert leaked not in response.text

    async def test_app_keeps_serving_after_an_unexpected_exception(
        self, client: httpx.AsyncClient
    ) -> None:
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/request-id")).status_code == 200


class TestStreamedBodies:
    """A path pattern of ``body_limits`` (object uploads) has its own limit, and its bytes
    pass as they come: binary content under any declared type, never kept for the text
    checks (a 5 GiB text/plain upload must not be held in memory)."""

    @pytest.fixture
    def streamed_app(self) -> RequestContextMiddleware:
        inner = FastAPI()

        @inner.put("/{path:path}")
        async def read_all(request: Request) -> dict[str, int]:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
            return {"length": size}

        return RequestContextMiddleware(
            inner,
            metrics=Metrics(),
            max_body_bytes=LIMIT,
            body_limits={"/s/v1/buckets/*/objects/*": 8 * LIMIT, "/s/v1/batch": 2 * LIMIT},
        )

    @pytest.mark.parametrize(
        ("path", "size", "status"),
        [
            ("/s/v1/buckets/b1/objects/a/b/c.txt", 8 * LIMIT, 200),
            ("/s/v1/buckets/b1/objects/a/b/c.txt", 8 * LIMIT + 1, 413),
            ("/s/v1/buckets/b1/objects/", 2 * LIMIT, 413),  # no key: not the pattern
            ("/s/v1/buckets/b1/other/key", 2 * LIMIT, 413),
            ("/s/v1/batch", 2 * LIMIT, 200),
            ("/s/v1/batch/x", 2 * LIMIT, 413),  # an exact path stays exact
        ],
    )
    async def test_a_pattern_sets_the_limit_of_the_paths_it_matches(
        self, streamed_app: RequestContextMiddleware, path: str, size: int, status: int
    ) -> None:
        chunks = [b"x" * LIMIT] * (size // LIMIT) + [b"x" * (size % LIMIT)]
        response = await asgi_request(
            streamed_app,
            "PUT",
            path,
            headers=[("content-type", "application/octet-stream")],
            chunks=chunks,
        )
        assert response.status == status

    async def test_text_bytes_under_a_pattern_skip_the_text_checks(
        self, streamed_app: RequestContextMiddleware
    ) -> None:
        """A NUL byte in a text body is refused elsewhere; an object's bytes are its own."""
        body = b"plain text\x00 with a NUL and \xff invalid UTF-8"
        response = await asgi_request(
            streamed_app,
            "PUT",
            "/s/v1/buckets/b1/objects/notes.txt",
            headers=[("content-type", "text/plain")],
            chunks=[body],
        )
        assert (response.status, response.body) == (200, b'{"length":%d}' % len(body))
        refused = await asgi_request(
            streamed_app,
            "PUT",
            "/s/v1/batch",
            headers=[("content-type", "text/plain")],
            chunks=[body],
        )
        assert refused.status == 400

"""Observability: JSON logs with request IDs, Prometheus metrics, OpenTelemetry, Sentry.

Logs come from a real ``keel serve``; Sentry events go to a real HTTP server on 127.0.0.1
standing in for Sentry's ingestion; spans go to an in-memory exporter on a tracer provider
handed to the app.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.logging import REDACTED
from keel.core.metrics import UNMATCHED_ROUTE
from keel.core.telemetry import scrub_event
from keel.settings import OtelSettings, Settings
from tests.support.apps import lifespan_of
from tests.support.failing_app import SECRETS
from tests.support.keel_process import (
    KeelServer,
    keel_env,
    keel_server,
    read_log_lines,
    uvicorn_server,
    wait_for,
)

BEARER_TOKEN = "tok3n.abc-def_ghi"


# --------------------------------------------------------------------------------------------
# Logs of a real ``keel serve``
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_log_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelServer]:
    cwd = tmp_path_factory.mktemp("logs")
    with keel_server(cwd, keel_env(KEEL_LOG_FORMAT="json")) as server:
        yield server


def request_log_line(server: KeelServer, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for line in read_log_lines(server.stderr_path):
            if line.get("event") == "http.request" and line.get("request_id") == request_id:
                return line
        return None

    found: dict[str, Any] = wait_for(find, message=f"no http.request line for {request_id}")
    return found


def test_request_log_line_is_json_with_the_callers_request_id(
    json_log_server: KeelServer,
) -> None:
    with json_log_server.client() as http:
        response = http.get("/openapi.json", headers={"X-Request-ID": "obs-req-42"})
    assert response.headers["x-request-id"] == "obs-req-42"
    line = request_log_line(json_log_server, "obs-req-42")
    assert line["route"] == "/openapi.json"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["level"] == "info"
    assert isinstance(line["duration_ms"], float)
    assert "timestamp" in line


def test_generated_request_id_is_echoed_and_logged(json_log_server: KeelServer) -> None:
    with json_log_server.client() as http:
        response = http.get("/no/such/path", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = response.headers["x-request-id"]
    assert generated != "bad id\twith spaces"
    assert response.json()["request_id"] == generated
    line = request_log_line(json_log_server, generated)
    assert (line["route"], line["status"]) == (UNMATCHED_ROUTE, 404)


def test_credentials_sent_by_the_client_never_reach_the_log(json_log_server: KeelServer) -> None:
    with json_log_server.client() as http:
        http.get(
            "/openapi.json?token=query-s3cret",
            headers={
                "X-Request-ID": "obs-secret-1",
                "Authorization": f"Bearer {BEARER_TOKEN}",
                "Cookie": "session=cookie-s3cret",
            },
        )
    request_log_line(json_log_server, "obs-secret-1")
    log = json_log_server.stderr()
    for secret in (BEARER_TOKEN, "query-s3cret", "cookie-s3cret"):
        assert secret not in log
    assert "Traceback" not in log


# --------------------------------------------------------------------------------------------
# Prometheus metrics
# --------------------------------------------------------------------------------------------


def items_router() -> APIRouter:
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return router


@pytest.fixture
async def metrics_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # No background work: a maintenance task holding a connection at scrape time would look
    # like a request that leaked one.
    app = create_app(settings, run_background=False)
    app.include_router(items_router())
    app.include_router(items_router(), prefix="/shop/v1")  # as services are mounted
    async with (
        lifespan_of(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
        ) as http,
    ):
        yield http


def scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def test_requests_are_counted_by_route_template_not_raw_path(
    metrics_client: httpx.AsyncClient,
) -> None:
    for path in ("/items/123", "/items/456", "/nowhere/1", "/nowhere/2"):
        await metrics_client.get(path)
    assert (await metrics_client.get("/items/not-a-number")).status_code == 422

    samples = scrape((await metrics_client.get("/metrics")).text)
    requests = {
        (labels["route"], labels["method"], labels["status"]): value
        for name, labels, value in samples
        if name == "keel_http_requests_total"
    }
    assert requests[("/items/{item_id}", "GET", "200")] == 2
    assert requests[("/items/{item_id}", "GET", "422")] == 1
    assert requests[(UNMATCHED_ROUTE, "GET", "404")] == 2
    await metrics_client.get("/shop/v1/items/7")
    samples = scrape((await metrics_client.get("/metrics")).text)
    prefixed = [
        labels["route"]
        for name, labels, _ in samples
        if name == "keel_http_requests_total" and labels["route"].startswith("/shop")
    ]
    assert prefixed == ["/shop/v1/items/{item_id}"]
    routes = {labels.get("route") for _, labels, _ in samples}
    assert not any(route and ("123" in route or "nowhere" in route) for route in routes)
    latency_counts = {
        labels["route"]: value
        for name, labels, value in samples
        if name == "keel_http_request_duration_seconds_count"
    }
    assert latency_counts["/items/{item_id}"] == 3


async def test_database_pool_gauges_are_exported(
    metrics_client: httpx.AsyncClient, settings: Settings
) -> None:
    await metrics_client.get("/health/ready")

    async def pool_gauges() -> dict[str, float]:
        samples = scrape((await metrics_client.get("/metrics")).text)
        return {name: value for name, _, value in samples if name.startswith("keel_db_pool_")}

    pool = await pool_gauges()
    assert set(pool) == {
        "keel_db_pool_size",
        "keel_db_pool_checked_out",
        "keel_db_pool_overflow",
        "keel_db_pool_checked_in",
    }
    # The companions (the audit sequencer, the gateway's policy poll) may hold one for a
    # moment; a connection a request leaked stays out for good.
    deadline = time.monotonic() + 30
    while pool["keel_db_pool_checked_out"] != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        pool = await pool_gauges()
    assert pool["keel_db_pool_checked_out"] == 0, "a request leaked a connection"
    if settings.effective_database_url.startswith("postgresql"):
        assert pool["keel_db_pool_size"] == settings.database_pool.size
        assert pool["keel_db_pool_checked_in"] >= 1


# --------------------------------------------------------------------------------------------
# OpenTelemetry
# --------------------------------------------------------------------------------------------


async def test_server_span_joins_the_callers_w3c_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}",
        data_dir=tmp_path / ".keel",
        otel=OtelSettings(enabled=True),
    )
    app = create_app(settings, tracer_provider=provider)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with (
        lifespan_of(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
        ) as http,
    ):
        response = await http.get(
            "/health/startup", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
        assert response.status_code == 200
        await http.get("/health/live")  # excluded from tracing: probes are noise

    server_spans = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert len(server_spans) == 1, [span.name for span in exporter.get_finished_spans()]
    span = server_spans[0]
    assert "/health/startup" in span.name
    assert span.context is not None
    assert span.parent is not None
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == parent_id
    assert span.parent.is_remote
    provider.shutdown()


async def test_tracing_stays_off_unless_enabled(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}", data_dir=tmp_path / ".keel"
    )
    app = create_app(settings, tracer_provider=provider)
    async with (
        lifespan_of(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
        ) as http,
    ):
        await http.get("/health/startup")
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


# --------------------------------------------------------------------------------------------
# Sentry
# --------------------------------------------------------------------------------------------


class SentryIngest:
    """A real HTTP server on 127.0.0.1 that accepts what Sentry's SDK sends and keeps it."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding:
                    raise AssertionError(f"unexpected Content-Encoding {encoding}")
                if self.path.startswith("/api/1/") and self.path.endswith(
                    ("/envelope/", "/store/")
                ):
                    ingest.bodies.append(raw.decode("utf-8", "replace"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SentryIngest:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def events(self) -> list[str]:
        return [body for body in self.bodies if '"type":"event"' in body.replace(" ", "")]


@pytest.fixture
def sentry_ingest() -> Iterator[SentryIngest]:
    with SentryIngest() as ingest:
        yield ingest


def test_unhandled_error_reaches_sentry_without_pii_or_secrets(
    sentry_ingest: SentryIngest, tmp_path: Path
) -> None:
    env = keel_env(
        KEEL_SENTRY__DSN=f"http://publickey@127.0.0.1:{sentry_ingest.port}/1",
        KEEL_LOG_FORMAT="json",
    )
    with (
        uvicorn_server("tests.support.failing_app:create_app", tmp_path, env) as server,
        server.client() as http,
    ):
        response = http.get(
            "/boom?api_key=query-s3cret",
            headers={
                "Authorization": f"Bearer {BEARER_TOKEN}",
                "Cookie": "session=cookie-s3cret",
                "X-Request-ID": "sentry-req-1",
            },
        )
        assert response.status_code == 500
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert response.json()["request_id"] == "sentry-req-1"
        assert "hunter2" not in response.text
        assert "RuntimeError" not in response.text
        wait_for(sentry_ingest.events, timeout=10, message="Sentry received no event")

    sent = "\n".join(sentry_ingest.bodies)
    assert "RuntimeError" in sent
    assert "boom" in sent
    assert "sentry-req-1" in sent or "user-42" in sent
    for leaked in (*SECRETS.values(), BEARER_TOKEN, "cookie-s3cret", "query-s3cret"):
        assert leaked not in sent, leaked


def test_scrub_event_strips_pii_and_secrets() -> None:
    event = {
        "message": "login failed for postgres://keel:pg-pass@db/keel with password=hunter2",
        "request": {
            "url": "https://keel.example/auth/v1/token",
            "query_string": "api_key=abc",
            "cookies": {"session": "c00kie"},
            "data": {"password": "hunter2"},
            "env": {"REMOTE_ADDR": "203.0.113.9"},
            "headers": {"Authorization": "Bearer abc.def", "Accept": "application/json"},
        },
        "user": {
            "id": "u1",
            "email": "alice@example.com",
            "ip_address": "203.0.113.9",
            "username": "alice",
        },
        "extra": {"client_secret": "shh", "note": "Bearer xyz.uvw", "count": 3},
        "exception": {
            "values": [
                {
                    "type": "RuntimeError",
                    "value": "token=t0ken-value",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "handle",
                                "vars": {"headers": [["b'cookie'", "b'session=frame-c00kie'"]]},
                            }
                        ]
                    },
                }
            ]
        },
    }
    scrubbed = scrub_event(event, None)
    flat = repr(scrubbed)
    for leaked in (
        "pg-pass",
        "hunter2",
        "api_key=abc",
        "c00kie",
        "alice",
        "203.0.113.9",
        "abc.def",
        "shh",
        "xyz.uvw",
        "t0ken-value",
        "frame-c00kie",
    ):
        assert leaked not in flat, leaked
    assert scrubbed["user"] == {"id": "u1"}
    assert scrubbed["request"]["query_string"] == REDACTED
    assert scrubbed["request"]["headers"]["Accept"] == "application/json"
    assert scrubbed["request"]["headers"]["Authorization"] == REDACTED
    assert scrubbed["extra"]["count"] == 3
    assert scrubbed["request"]["url"] == "https://keel.example/auth/v1/token"
    exception = scrubbed["exception"]["values"][0]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == f"token={REDACTED}"
    assert exception["stacktrace"]["frames"] == [{"function": "handle"}]
    assert scrubbed["message"].startswith("login failed for postgres://")

"""keel_client.logs: a service's JSON log lines carry its request's id and trace context."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel_client.logs import (
    JSONLogFormatter,
    RequestContextMiddleware,
    configure_logging,
    current_request,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the root logger writes as JSON lines during the test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONLogFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    """The lines of the service's own loggers (not httpx's of the test client)."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] != "httpx"]


def service() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str | None]:
        logging.getLogger("orders").info("order read", extra={"order_id": order_id})
        context = current_request()
        return {"request_id": context.request_id if context else None}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


async def get(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path, headers=headers)


class TestRequestContextMiddleware:
    async def test_the_callers_request_id_is_kept_echoed_and_logged(
        self, lines: io.StringIO
    ) -> None:
        answer = await get(
            service(), "/orders/7", {"X-Request-ID": "req-42", "traceparent": TRACEPARENT}
        )
        assert answer.headers["x-request-id"] == "req-42"
        assert answer.json() == {"request_id": "req-42"}
        app_line, access_line = records(lines)
        assert app_line["message"] == "order read"
        assert app_line["logger"] == "orders"
        assert app_line["order_id"] == "7"
        assert app_line["request_id"] == "req-42"
        assert app_line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert app_line["parent_span_id"] == "00f067aa0ba902b7"
        assert access_line["message"] == "request"
        assert (access_line["method"], access_line["path"], access_line["status"]) == (
            "GET",
            "/orders/7",
            200,
        )
        assert access_line["request_id"] == "req-42"

    @pytest.mark.parametrize("sent", ["", "has space", "x" * 129, 'quote"and\\slash'])
    async def test_an_unusable_request_id_is_replaced(self, sent: str) -> None:
        answer = await get(service(), "/orders/7", {"X-Request-ID": sent})
        echoed = answer.headers["x-request-id"]
        assert echoed != sent
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)
        assert answer.headers.get_list("x-request-id") == [echoed]

    async def test_each_request_without_an_id_gets_its_own(self) -> None:
        app = service()
        first, second = await get(app, "/orders/1"), await get(app, "/orders/2")
        assert first.headers["x-request-id"] != second.headers["x-request-id"]

    @pytest.mark.parametrize(
        "traceparent",
        [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # an all-zero parent
            "garbage",
        ],
    )
    async def test_an_invalid_traceparent_gives_no_trace(
        self, lines: io.StringIO, traceparent: str
    ) -> None:
        await get(service(), "/orders/7", {"traceparent": traceparent})
        assert all("trace_id" not in line for line in records(lines))

    async def test_a_failing_request_is_logged_as_a_500_with_its_id(
        self, lines: io.StringIO
    ) -> None:
        answer = await get(service(), "/boom", {"X-Request-ID": "req-boom"})
        assert answer.status_code == 500
        access = [line for line in records(lines) if line["message"] == "request"]
        assert access[-1]["status"] == 500
        assert access[-1]["request_id"] == "req-boom"


class TestJSONLogFormatter:
    def test_outside_a_request_there_is_no_request_id(self, lines: io.StringIO) -> None:
        logging.getLogger("worker").warning("slow %s", "job", extra={"seconds": 3.5})
        (line,) = records(lines)
        assert line["level"] == "WARNING"
        assert line["message"] == "slow job"
        assert line["seconds"] == 3.5
        assert "request_id" not in line
        assert line["time"].endswith("Z")

    def test_an_exception_is_one_field_of_the_line(self, lines: io.StringIO) -> None:
        try:
            raise ValueError("bad amount")
        except ValueError:
            logging.getLogger("orders").exception("refused")
        (line,) = records(lines)
        assert "ValueError: bad amount" in line["exception"]

    def test_a_value_json_cannot_hold_is_written_as_text(self, lines: io.StringIO) -> None:
        logging.getLogger("orders").info("odd", extra={"thing": object()})
        assert records(lines)[0]["thing"].startswith("<object object")


def test_configure_logging_twice_leaves_one_handler() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        configure_logging("INFO", stream=stream)
        assert len(root.handlers) == 1
        logging.getLogger("svc").info("once")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["once"]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)

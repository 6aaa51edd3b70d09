"""Health, readiness with Keel, and the request context of every log line."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient
from keel_client.logs import JSONLogFormatter


def test_live_answers_without_asking_anything(client: TestClient) -> None:
    answer = client.get("/health/live")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_ready_checks_keel_and_the_clients(client: TestClient) -> None:
    answer = client.get("/health/ready")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready"
    assert body["checks"]["keel"] == "ok"
{%- if cookiecutter.use_audit %}
    assert body["checks"]["audit"] == "ok"
{%- endif %}
{%- if cookiecutter.use_flags %}
    assert body["checks"]["flags"] == "ok"
{%- endif %}


def test_request_id_is_echoed_and_on_the_log_lines(client: TestClient) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JSONLogFormatter())
    logging.getLogger().addHandler(handler)
    try:
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        answer = client.get(
            "/health/live", headers={"X-Request-ID": "req-template-1", "traceparent": traceparent}
        )
        fresh = client.get("/health/live")
    finally:
        logging.getLogger().removeHandler(handler)
    assert answer.headers["x-request-id"] == "req-template-1"
    assert fresh.headers["x-request-id"] not in ("", "req-template-1")
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    access = [r for r in records if r["message"] == "request" and r["path"] == "/health/live"]
    assert access[0]["request_id"] == "req-template-1"
    assert access[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert access[0]["status"] == 200
    assert access[1]["request_id"] == fresh.headers["x-request-id"]

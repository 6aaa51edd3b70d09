"""The assembled app: health, metrics, problem+json on every error path."""

from __future__ import annotations

import httpx

from keel.core.errors import PROBLEM_CONTENT_TYPE


async def test_ready_answers_200_with_database_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "pass"


async def test_unknown_path_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/path", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["type"] == "urn:keel:problem:not-found"
    assert body["request_id"] == "abc-123"
    assert response.headers["x-request-id"] == "abc-123"

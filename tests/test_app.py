"""The assembled app: health, metrics, problem+json on every error path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.keel_process import keel_env


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


class Widget(BaseModel):
    name: str
    size: int


def widgets_router() -> APIRouter:
    router = APIRouter()

    @router.post("/widgets")
    async def create_widget(widget: Widget) -> Widget:
        return widget

    return router


@pytest.fixture
async def widgets_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The assembled app plus a route that takes a JSON body."""
    app = create_app(settings)
    app.include_router(widgets_router())
    transport = httpx.ASGITransport(app=app)
    async with (
        lifespan_of(app),
        httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http,
    ):
        yield http


async def test_malformed_json_body_is_problem_json(widgets_client: httpx.AsyncClient) -> None:
    response = await widgets_client.post(
        "/widgets", content=b'{"name": "a", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"] == "urn:keel:problem:malformed-body"


async def test_invalid_body_is_problem_json_without_the_input(
    widgets_client: httpx.AsyncClient,
) -> None:
    response = await widgets_client.post("/widgets", json={"name": "s3cret-input", "size": "x"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["type"] == "urn:keel:problem:validation"
    assert [error["location"] for error in body["errors"]] == [["body", "size"]]
    assert "s3cret-input" not in response.text


async def test_oversized_body_is_problem_json(
    widgets_client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await widgets_client.post(
        "/widgets",
        content=b"x" * (settings.max_body_bytes + 1),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"] == "urn:keel:problem:payload-too-large"


async def test_liveness_is_answered_with_request_id_and_counted(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": "live-1"})
    head = await client.head("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "pass"})
    assert response.headers["x-request-id"] == "live-1"
    assert head.status_code == 200
    assert head.content == b""
    metrics = (await client.get("/metrics")).text
    assert 'keel_http_requests_total{method="GET",route="/health/live",status="200"} 1.0' in metrics
    assert (
        'keel_http_requests_total{method="HEAD",route="/health/live",status="200"} 1.0' in metrics
    )


def test_the_openapi_document_builds_without_warnings(settings: Settings) -> None:
    """Every operation has its own id (a warning here goes to stderr, breaking JSON logs)."""
    import warnings

    app = create_app(settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        document = app.openapi()
    # A ResourceWarning here is an earlier test's garbage (an unclosed socket) collected now.
    assert [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)] == []
    operation_ids = [
        operation["operationId"]
        for path in document["paths"].values()
        for operation in path.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))
    assert "/secrets/v1/{mount}/{operation}/{path}" in document["paths"]


#: What a server on the embedded default does without, and what each would cost it at every
#: start (import time and memory: the foundation's cold-start and idle-RSS budgets).
LEFT_FOR_LATER = (
    "httpx",  # the SDK's HTTP clients (keel_client.http and its cache)
    "hishel",
    "redis",  # only with KEEL_REDIS_URL
    "asyncpg",  # only on PostgreSQL, or for the secrets database engine
    "alembic",  # only to migrate an existing database
    "jsonschema",  # only for a config application's schema
    "hcl2",  # only for a secrets policy written in HCL
    "pycountry",  # only for a financial transaction's currency
    "scipy",  # only for an experiment's chi-squared test
    "jinja2",  # only for the login page
    "pydantic.v1",  # FastAPI's check of a response model: with a service's routes
    "croniter",  # only for a job schedule's cron expression
    "keel.notify.service.messages",  # only for a message, such as an account e-mail
)


def _run_fresh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (nothing of Keel imported yet), on the embedded
    default in ``cwd``; it must succeed."""
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=keel_env(KEEL_LOG_LEVEL="warning"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed


def test_a_server_on_the_embedded_default_starts_without_what_it_does_not_use(
    tmp_path: Path,
) -> None:
    script = (
        "import asyncio, sys\n"
        "from asgi_lifespan import LifespanManager\n"
        "from keel.app import create_app_from_env\n"
        "async def main():\n"
        "    async with LifespanManager(create_app_from_env()):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        f"print(sorted(m for m in {LEFT_FOR_LATER!r} if m in sys.modules))\n"
    )
    completed = _run_fresh(script, tmp_path)
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_a_service_s_routes_are_built_on_its_first_request_not_at_start(
    tmp_path: Path,
) -> None:
    """Starting, the health checks and the ready check need no service's routes (importing
    and building them was half of the start: issue 15); the first request under
    ``/<service>/`` builds that service's, the OpenAPI document every one."""
    script = (
        "import asyncio, sys, httpx\n"
        "from asgi_lifespan import LifespanManager\n"
        "from keel.app import create_app_from_env\n"
        "def routers():\n"
        "    return sorted(m for m in sys.modules if m.startswith('keel.')"
        " and m.split('.')[2:3] == ['router'])\n"
        "async def main():\n"
        "    app = create_app_from_env()\n"
        "    transport = httpx.ASGITransport(app=app)\n"
        "    async with LifespanManager(app), httpx.AsyncClient(\n"
        "        transport=transport, base_url='http://keel.test') as http:\n"
        "        print((await http.get('/health/ready')).status_code, routers())\n"
        "        print((await http.get('/flags/v1/envs')).status_code, routers())\n"
        "        paths = (await http.get('/openapi.json')).json()['paths']\n"
        "        print(len(paths) > 150, len({m.split('.')[1] for m in routers()}))\n"
        "asyncio.run(main())\n"
    )
    completed = _run_fresh(script, tmp_path)
    ready, flags, listed = completed.stdout.strip().splitlines()[-3:]
    assert ready == "200 []"
    assert flags == "401 ['keel.flags.router']"
    assert listed == "True 9"


def test_the_app_resumes_the_garbage_collector_paused_for_its_start(tmp_path: Path) -> None:
    # keel.core.startup: paused while `keel serve` imports and builds, resumed once started.
    script = (
        "import asyncio, gc\n"
        "from asgi_lifespan import LifespanManager\n"
        "from keel.app import create_app_from_env\n"
        "async def main():\n"
        "    app = create_app_from_env()\n"
        "    paused = not gc.isenabled()\n"
        "    async with LifespanManager(app):\n"
        "        print(paused, gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "asyncio.run(main())\n"
    )
    completed = _run_fresh(script, tmp_path)
    assert completed.stdout.split() == ["True", "True", "True"]

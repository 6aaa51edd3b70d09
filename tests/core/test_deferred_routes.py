"""A service's routes built on first need (:class:`keel.core.http.DeferredRouter`): once,
whoever asks first; not for a request outside its prefix; a failed build answered as any
unexpected error is and tried again by the next request; listed in the OpenAPI document."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.http import DeferredRouter
from keel.settings import Settings
from tests.support.asgi import serve

SECRET_MESSAGE = "cannot import the widgets: password=hunter2-top-secret"


class WidgetRoutes:
    """A router factory that counts its calls and fails while ``failures`` are left."""

    def __init__(self, *, failures: int = 0, seconds: float = 0.0) -> None:
        self.calls = 0
        self.failures = failures
        self.seconds = seconds
        self._lock = threading.Lock()

    def __call__(self) -> APIRouter:
        with self._lock:
            self.calls += 1
            failing = self.failures > 0
            self.failures -= failing
        time.sleep(self.seconds)  # widens the window for a second builder
        if failing:
            raise RuntimeError(SECRET_MESSAGE)
        router = APIRouter(prefix="/v1")

        @router.get("/widgets")
        async def list_widgets() -> list[str]:
            return ["sprocket"]

        return router


def app_with(sqlite_settings: Settings, routes: WidgetRoutes) -> tuple[FastAPI, DeferredRouter]:
    app = create_app(sqlite_settings)
    deferred = DeferredRouter(routes, mount_prefix="/widgets/")
    app.include_router(deferred, prefix="/widgets")
    return app, deferred


@pytest.fixture
async def client_and_routes(
    sqlite_settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, DeferredRouter, WidgetRoutes]]:
    routes = WidgetRoutes()
    app, deferred = app_with(sqlite_settings, routes)
    async with serve(app) as http:
        yield http, deferred, routes


async def test_the_routes_are_built_by_the_first_request_under_the_prefix(
    client_and_routes: tuple[httpx.AsyncClient, DeferredRouter, WidgetRoutes],
) -> None:
    client, deferred, routes = client_and_routes
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/widgetsandmore/v1/widgets")).status_code == 404
    assert (routes.calls, deferred.is_built) == (0, False)

    first = await client.get("/widgets/v1/widgets")
    again = await client.get("/widgets/v1/widgets")

    assert (first.status_code, first.json()) == (200, ["sprocket"])
    assert again.json() == ["sprocket"]
    assert (routes.calls, deferred.is_built) == (1, True)


async def test_an_unknown_path_under_the_prefix_is_a_problem_404(
    client_and_routes: tuple[httpx.AsyncClient, DeferredRouter, WidgetRoutes],
) -> None:
    client, _, routes = client_and_routes
    response = await client.get("/widgets/v1/gadgets")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert routes.calls == 1


def test_threads_building_at_once_build_once(sqlite_settings: Settings) -> None:
    routes = WidgetRoutes(seconds=0.2)
    _, deferred = app_with(sqlite_settings, routes)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(deferred.build) for _ in range(8)]:
            future.result()
    assert routes.calls == 1
    assert [getattr(route, "path", None) for route in deferred.routes] == ["/v1/widgets"]


async def test_a_failed_build_is_an_internal_problem_and_the_next_request_builds_again(
    sqlite_settings: Settings,
) -> None:
    routes = WidgetRoutes(failures=1)
    app, deferred = app_with(sqlite_settings, routes)
    async with serve(app) as client:
        failed = await client.get("/widgets/v1/widgets", headers={"X-Request-ID": "req-500"})
        assert failed.status_code == 500
        assert failed.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert failed.json()["type"] == "urn:keel:problem:internal"
        assert failed.json()["request_id"] == "req-500"
        for leaked in ("hunter2", "password", "RuntimeError", "Traceback"):
            assert leaked not in failed.text
        assert not deferred.is_built

        served = await client.get("/widgets/v1/widgets")

    assert (served.status_code, served.json()) == (200, ["sprocket"])
    assert routes.calls == 2


async def test_the_openapi_document_builds_every_deferred_service_and_lists_its_routes(
    sqlite_settings: Settings,
) -> None:
    app = create_app(sqlite_settings)
    async with serve(app) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for name in sqlite_settings.services:
        assert any(path.startswith(f"/{name}/v1/") for path in paths), name
    assert "/.well-known/jwks.json" in paths

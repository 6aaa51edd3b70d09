"""Health probes under fault injection: PostgreSQL and Redis reached through TCP proxies.

Cutting a proxy is an outage as the app sees it (connections reset, new ones refused); a
blackhole is a silent partition (nothing answers). Readiness must name the failing
dependency, stay bounded by the check timeout, and recover by itself without a restart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.keel_process import TEST_MASTER_KEY
from tests.support.tcpproxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CHECK_TIMEOUT = 0.5
ProxiedClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgres_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    url = httpx.URL(redis_url)
    async with tcp_proxy(url.host, url.port or 6379) as proxy:
        yield proxy


@pytest.fixture
async def proxied_client(
    postgres_url: str, redis_url: str, pg_proxy: TcpProxy, redis_proxy: TcpProxy, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A started app whose database and Redis are both behind a proxy."""
    settings = Settings(
        database_url=make_url(postgres_url)
        .set(host="127.0.0.1", port=pg_proxy.port)
        .render_as_string(hide_password=False),
        redis_url=str(httpx.URL(redis_url).copy_with(host="127.0.0.1", port=redis_proxy.port)),
        data_dir=tmp_path / ".keel",
        master_key=TEST_MASTER_KEY,
        health_check_timeout_seconds=CHECK_TIMEOUT,
        services=[],  # the checks of the platform's own dependencies, nothing else
    )
    app = create_app(settings)
    async with (
        lifespan_of(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
        ) as http,
    ):
        yield http


async def health_check_up(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    return {
        sample.labels["check"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "keel_health_check_up"
        for sample in family.samples
    }


async def assert_not_ready_because_of(
    http: httpx.AsyncClient, failing: str, passing: str
) -> dict[str, object]:
    response = await http.get("/health/ready", headers={"X-Request-ID": "ready-probe"})
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["type"] == "urn:keel:problem:unavailable"
    assert body["detail"] == f"not ready: {failing}"
    assert body["request_id"] == "ready-probe"
    assert body["checks"][failing]["status"] == "fail"
    assert body["checks"][passing]["status"] == "pass"
    check: dict[str, object] = body["checks"][failing]
    return check


async def test_ready_live_and_startup_pass_with_every_dependency_up(
    proxied_client: httpx.AsyncClient,
) -> None:
    ready = await proxied_client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "pass"
    assert ready.json()["checks"]["database"]["status"] == "pass"
    assert ready.json()["checks"]["redis"]["status"] == "pass"
    assert (await proxied_client.get("/health/live")).json() == {"status": "pass"}
    assert (await proxied_client.get("/health/startup")).status_code == 200
    assert await health_check_up(proxied_client) == {"database": 1.0, "redis": 1.0}


async def test_database_outage_fails_readiness_naming_it_and_recovers_by_itself(
    proxied_client: httpx.AsyncClient, pg_proxy: TcpProxy
) -> None:
    assert (await proxied_client.get("/health/ready")).status_code == 200
    connections_before = pg_proxy.connections_accepted

    await pg_proxy.cut()
    check = await assert_not_ready_because_of(proxied_client, failing="database", passing="redis")
    assert "Traceback" not in str(check["error"])
    assert (await proxied_client.get("/health/live")).status_code == 200
    assert (await proxied_client.get("/health/startup")).status_code == 200
    assert await health_check_up(proxied_client) == {"database": 0.0, "redis": 1.0}

    await pg_proxy.restore()
    recovered = await proxied_client.get("/health/ready")
    assert recovered.status_code == 200, recovered.text
    assert pg_proxy.connections_accepted > connections_before  # the pool reconnected
    assert await health_check_up(proxied_client) == {"database": 1.0, "redis": 1.0}


async def test_redis_outage_fails_readiness_naming_it_and_recovers_by_itself(
    proxied_client: httpx.AsyncClient, redis_proxy: TcpProxy
) -> None:
    assert (await proxied_client.get("/health/ready")).status_code == 200

    await redis_proxy.cut()
    await assert_not_ready_because_of(proxied_client, failing="redis", passing="database")
    assert (await proxied_client.get("/health/live")).status_code == 200

    await redis_proxy.restore()
    recovered = await proxied_client.get("/health/ready")
    assert recovered.status_code == 200, recovered.text


@pytest.mark.parametrize(("dependency", "other"), [("database", "redis"), ("redis", "database")])
async def test_unanswering_dependency_fails_readiness_within_the_check_timeout(
    proxied_client: httpx.AsyncClient,
    pg_proxy: TcpProxy,
    redis_proxy: TcpProxy,
    dependency: str,
    other: str,
) -> None:
    proxy = pg_proxy if dependency == "database" else redis_proxy
    assert (await proxied_client.get("/health/ready")).status_code == 200

    await proxy.blackhole()
    started = time.perf_counter()
    check = await assert_not_ready_because_of(proxied_client, failing=dependency, passing=other)
    elapsed = time.perf_counter() - started
    assert check["error"] == "timed out"
    assert CHECK_TIMEOUT * 0.9 <= elapsed < CHECK_TIMEOUT + 1.0
    assert (await proxied_client.get("/health/live")).status_code == 200

    await proxy.restore()
    recovered = await proxied_client.get("/health/ready")
    assert recovered.status_code == 200, recovered.text

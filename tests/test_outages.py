"""Outages of PostgreSQL and Redis as API callers see them (docs/operations.md, "When
PostgreSQL or Redis is down").

PostgreSQL cut or silent: every API call answers 503 with ``Retry-After`` within a few
seconds, never a 500, and works again once the database is back. Redis stopped: the
endpoints that count attempts per address fall back to a per-process count and keep
answering (and limiting), the rest works as before, and Redis is used again once it returns.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from keel.app import create_app
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.ratelimit import InMemoryRateLimiter
from keel.settings import AuthSettings, DatabasePoolSettings, Settings
from keel_client.edge._ratelimit import redis_key
from tests.support.apps import lifespan_of
from tests.support.asgi import serve_over_tcp
from tests.support.flags_api import API as FLAGS_API
from tests.support.flags_api import new_environment, new_flag, next_flags_event, watching
from tests.support.keel_process import TEST_MASTER_KEY, free_port
from tests.support.tcpproxy import TcpProxy, tcp_proxy
from tests.support.tenants import PASSWORD, TenantAdmin, create_user, make_tenant_admin

#: The deployment's bounds: 1 s to connect or prove a pooled connection alive, 3 s a
#: statement (the defaults are 2 s and 5 s). A call meets at most a statement's timeout and a
#: ping's and a reconnect's, 5 s; the bound leaves room for a loaded machine (a CI run once
#: took 12.3 s under the default 5 s statement timeout). Before these bounds existed, a
#: silent database took 30 s and more.
POOL = DatabasePoolSettings(connect_timeout_seconds=1.0, command_timeout_seconds=3.0)
OUTAGE_ANSWER_BOUND_SECONDS = 8.0


@dataclass
class Deployment:
    app: FastAPI
    http: httpx.AsyncClient
    admin: TenantAdmin
    username: str


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgres_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def on_proxied_postgres(
    postgres_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> AsyncIterator[Deployment]:
    settings = Settings(
        database_url=make_url(postgres_url)
        .set(host="127.0.0.1", port=pg_proxy.port)
        .render_as_string(hide_password=False),
        redis_url=None,
        data_dir=tmp_path / ".keel",
        master_key=TEST_MASTER_KEY,
        public_url="http://keel.test",
        database_pool=POOL,
    )
    app = create_app(settings)
    async with (
        lifespan_of(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
        ) as http,
    ):
        admin = await make_tenant_admin(app)
        username = f"u-{uuid.uuid4().hex[:8]}"
        await create_user(app, admin.tenant_id, username)
        written = await http.post(
            "/secrets/v1/secret/data/billing/db",
            headers={"X-Vault-Token": admin.api_key},
            json={"data": {"password": "s3cret"}},
        )
        assert written.status_code == 200, written.text
        yield Deployment(app, http, admin, username)


async def api_calls(deployment: Deployment) -> dict[str, httpx.Response]:
    """An authenticated GET, a login and a secret read, each with the time it took."""
    http, admin = deployment.http, deployment.admin
    calls = {
        "users": lambda: http.get("/auth/v1/users", headers=admin.headers),
        "login": lambda: http.post(
            "/auth/v1/login",
            json={
                "tenant": admin.tenant_slug,
                "username": deployment.username,
                "password": PASSWORD,
            },
        ),
        "secret": lambda: http.get(
            "/secrets/v1/secret/data/billing/db", headers={"X-Vault-Token": admin.api_key}
        ),
    }
    answers = {}
    for name, call in calls.items():
        started = time.perf_counter()
        answers[name] = await call()
        answers[name].extensions["elapsed"] = time.perf_counter() - started
    return answers


def assert_unavailable(answers: dict[str, httpx.Response]) -> None:
    for name, answer in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        assert int(answer.headers["retry-after"]) >= 1, name
        assert answer.extensions["elapsed"] < OUTAGE_ANSWER_BOUND_SECONDS, name
        if name == "secret":  # the Vault API answers in Vault's shape
            assert answer.headers["content-type"] == "application/json"
            assert "database is unavailable" in answer.json()["errors"][0]
        else:
            assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE, name
            assert answer.json()["type"] == "urn:keel:problem:unavailable", name


def assert_working(answers: dict[str, httpx.Response]) -> None:
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)


async def assert_working_again(deployment: Deployment) -> None:
    """Once readiness passes again (as a load balancer waits for), every call works, and no
    background work of the app ended on the way (the audit sequencer polls every second)."""
    deadline = time.monotonic() + 15
    while (await deployment.http.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, "readiness never came back"
        await asyncio.sleep(0.2)
    assert_working(await api_calls(deployment))
    context = deployment.app.state.keel
    assert [task.get_name() for task in context.background_tasks if task.done()] == []


@pytest.mark.postgres
async def test_api_calls_answer_503_while_postgres_is_cut_and_work_once_it_returns(
    on_proxied_postgres: Deployment, pg_proxy: TcpProxy
) -> None:
    assert_working(await api_calls(on_proxied_postgres))
    await pg_proxy.cut()
    assert_unavailable(await api_calls(on_proxied_postgres))
    await asyncio.sleep(1.5)  # background work meets the outage too
    await pg_proxy.restore()
    await assert_working_again(on_proxied_postgres)


@pytest.mark.postgres
async def test_api_calls_answer_503_in_bounded_time_while_postgres_hangs(
    on_proxied_postgres: Deployment, pg_proxy: TcpProxy
) -> None:
    """Connections accepted and never answered (a partition, a hung server or proxy)."""
    assert_working(await api_calls(on_proxied_postgres))
    await pg_proxy.blackhole()
    assert_unavailable(await api_calls(on_proxied_postgres))
    await pg_proxy.restore()
    await assert_working_again(on_proxied_postgres)


# -- Redis --------------------------------------------------------------------------------

LOGIN_LIMIT = 4


class RedisServer:
    """A redis-server of the test's own on a free port, stopped and started again at will
    (the machine's shared Redis is never touched)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def keys(self, pattern: str) -> list[bytes]:
        with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
            return list(client.keys(pattern))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:  # as tests/conftest.py's service_missing: fail in CI, else skip
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not on PATH; CI=true requires it", pytrace=False)
        pytest.skip("redis-server is not on PATH; install Redis to run this test")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisDeployment:
    app: FastAPI
    admin: TenantAdmin
    username: str
    email: str
    role_id: str
    secret_id: str

    def client(self, address: str) -> httpx.AsyncClient:
        """A client calling from ``address``: each part of a test counts its own attempts."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://keel.test")


@pytest.fixture
async def on_own_redis(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[RedisDeployment]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}",
        redis_url=own_redis.url,
        data_dir=tmp_path / ".keel",
        master_key=TEST_MASTER_KEY,
        public_url="http://keel.test",
        auth=AuthSettings(login_rate_per_ip_per_minute=LOGIN_LIMIT),
    )
    app = create_app(settings)
    async with lifespan_of(app):
        admin = await make_tenant_admin(app)
        username = f"u-{uuid.uuid4().hex[:8]}"
        email = f"{username}@example.com"
        await create_user(app, admin.tenant_id, username, email=email)
        vault = {"X-Vault-Token": admin.api_key}
        deployment = RedisDeployment(app, admin, username, email, "", "")
        async with deployment.client("10.0.0.1") as http:
            role = "/secrets/v1/auth/approle/role/billing"
            made = await http.post(role, headers=vault, json={"token_policies": ["default"]})
            assert made.status_code == 204, made.text
            deployment.role_id = (await http.get(f"{role}/role-id", headers=vault)).json()["data"][
                "role_id"
            ]
            deployment.secret_id = (await http.post(f"{role}/secret-id", headers=vault)).json()[
                "data"
            ]["secret_id"]
        yield deployment


def login_count(address: str) -> str:
    """The Redis key counting logins from ``address``: the edge engine's, which names a
    digest of the address, never the address itself."""
    rule = InMemoryRateLimiter(limit=LOGIN_LIMIT, window_seconds=60, prefix="auth-login-ip").rule
    return redis_key("keel:rl:", rule, f"login:{address}")


async def guarded_calls(deployment: RedisDeployment, http: httpx.AsyncClient) -> list[int]:
    """Statuses of a login, an AppRole login and a password reset request."""
    login = await http.post(
        "/auth/v1/login",
        json={
            "tenant": deployment.admin.tenant_slug,
            "username": deployment.username,
            "password": PASSWORD,
        },
    )
    approle = await http.post(
        "/secrets/v1/auth/approle/login",
        json={"role_id": deployment.role_id, "secret_id": deployment.secret_id},
    )
    reset = await http.post(
        "/auth/v1/password-reset",
        json={"tenant": deployment.admin.tenant_slug, "email": deployment.email},
    )
    return [login.status_code, approle.status_code, reset.status_code]


def fallbacks_counted(metrics_text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "keel_dependency_unavailable"
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels
        == {"dependency": "redis", "use": "rate-limit:auth-login-ip", "outcome": "fail_open"}
    )


@pytest.mark.redis
async def test_with_redis_stopped_logins_fall_back_to_a_per_process_limit(
    on_own_redis: RedisDeployment, own_redis: RedisServer
) -> None:
    async with on_own_redis.client("10.0.0.2") as http:
        assert await guarded_calls(on_own_redis, http) == [200, 200, 202]
    assert own_redis.keys(login_count("10.0.0.2"))  # counted in Redis
    assert not own_redis.keys("*10.0.0.2*")  # under a digest: no address in Redis

    own_redis.stop()
    async with on_own_redis.client("10.0.0.3") as http:
        assert await guarded_calls(on_own_redis, http) == [200, 200, 202]
        # Still limited, per process: at most LOGIN_LIMIT logins a minute from one address
        # (a minute may turn during the loop once, so twice the limit is enough to see a 429).
        statuses = [
            (await guarded_calls(on_own_redis, http))[0] for _ in range(2 * LOGIN_LIMIT + 1)
        ]
        assert 429 in statuses, statuses
        assert 500 not in statuses
        assert fallbacks_counted((await http.get("/metrics")).text) >= 1

    own_redis.start()
    async with on_own_redis.client("10.0.0.4") as http:
        deadline = time.monotonic() + 15  # Redis is tried again some seconds after a failure
        while not own_redis.keys(login_count("10.0.0.4")):
            assert time.monotonic() < deadline, "the limiter never went back to Redis"
            assert (await guarded_calls(on_own_redis, http))[0] in (200, 429)
            await asyncio.sleep(0.5)


@pytest.mark.redis
async def test_with_redis_stopped_other_calls_and_change_streams_keep_working(
    on_own_redis: RedisDeployment, own_redis: RedisServer
) -> None:
    headers = on_own_redis.admin.headers
    own_redis.stop()
    async with on_own_redis.client("10.0.0.5") as http:
        assert (await http.get("/auth/v1/users", headers=headers)).status_code == 200
        environment = await new_environment(http, headers)
        await new_flag(http, headers, "checkout-v2")
        written = await http.post(
            "/secrets/v1/secret/data/billing/db",
            headers={"X-Vault-Token": on_own_redis.admin.api_key},
            json={"data": {"password": "s3cret"}},
        )
        assert written.status_code == 200, written.text
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["status"] == "fail"

        # A stream opened while Redis is down reads its table instead.
        async with (
            serve_over_tcp(on_own_redis.app) as url,
            watching(url, environment, headers) as queue,
        ):
            async with asyncio.timeout(5):
                opened = await queue.get()
            assert opened is not None
            assert opened.event == "ready"
            toggled = await http.post(
                f"{FLAGS_API}/envs/{environment}/flags/checkout-v2/toggle",
                headers=headers,
                json={"on": True},
            )
            assert toggled.status_code == 200, toggled.text
            assert (await next_flags_event(queue)).json()["data"]["keys"] == ["checkout-v2"]

            own_redis.start()
            toggled = await http.post(
                f"{FLAGS_API}/envs/{environment}/flags/checkout-v2/toggle",
                headers=headers,
                json={"on": False},
            )
            assert toggled.status_code == 200, toggled.text
            assert (await next_flags_event(queue)).json()["data"]["keys"] == ["checkout-v2"]
        assert (await http.get("/health/ready")).status_code == 200

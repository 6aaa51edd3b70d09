"""Shared fixtures: real SQLite and PostgreSQL databases, real Redis, a running Keel app and
a tenant administrator of it. Helpers that are not fixtures live in ``tests/support``.

PostgreSQL and Redis are found at 127.0.0.1 (or ``KEEL_TEST_DATABASE_URL`` /
``KEEL_TEST_REDIS_URL``). Where they are missing their tests are skipped with one line saying
so, except when ``CI=true``: there a missing service fails the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
import structlog
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from keel.app import create_app
from keel.core.db import Database
from keel.core.lifecycle import build_context, start_services
from keel.core.logging import configure_logging
from keel.migrations import upgrade
from keel.settings import LogFormat, Settings
from tests.support.apps import lifespan_of
from tests.support.databases import create_postgres_database, drop_postgres_database, postgres_dsn
from tests.support.keel_process import LOADED_MACHINE_WAITS, TEST_MASTER_KEY
from tests.support.loop_teardown import install as bound_loop_teardown
from tests.support.tenants import TenantAdmin, make_tenant_admin

POSTGRES_URL = os.environ.get("KEEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"

# Every app the tests build (their settings read the environment) and every `keel serve` they
# start waits as LOADED_MACHINE_WAITS says, not the defaults a loaded CI machine outlasted.
for _name, _wait in LOADED_MACHINE_WAITS.items():
    os.environ.setdefault(_name, _wait)

# Before any test's log capture is set up: ``create_app`` would otherwise configure logging
# at the first app a test builds, replacing the root handlers a capture had installed.
configure_logging("info", LogFormat.auto)

# A leftover task that ignores its cancellation is named and abandoned after a bounded wait
# instead of hanging its xdist worker in the loop's teardown (tests/support/loop_teardown.py).
bound_loop_teardown()


#: The files that take minutes (2026-12-06, ``--durations=0`` on 2 cores: the docs pages
#: 236 s and the fuzzer 173 s of 1,247 s in all; the jobs fleet's processes 150 s). They
#: run first: ``make test`` hands whole files to its two workers in collection order
#: (``--no-loadscope-reorder``; xdist would otherwise hand out the files with the most tests
#: first), so a long file collected last kept one worker busy for minutes after the other had
#: finished.
SLOW_FILES_FIRST = (
    "tests/docs/test_examples.py",
    "tests/test_fuzz.py",
    "tests/jobs/test_fleet.py",
    "tests/gateway/test_proxy_e2e.py",
    "tests/client/testing/test_plugin.py",  # 2.5 min: nine pytest runs of a service project
    "tests/template/test_make_test.py",  # 4 min: eleven generated projects' make test
    "tests/template/test_live.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: place for place, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


def service_missing(what: str, url: str, reason: object) -> None:
    """Skip (locally) or fail (in CI) a test whose backing service is absent."""
    message = f"{what} not reachable at {url} ({reason})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(f"{message}; set KEEL_TEST_* or start it to run this test")


async def _postgres_reachable(url: str) -> None:
    connection = await asyncpg.connect(postgres_dsn(url), timeout=3)
    await connection.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a reachable PostgreSQL server (its ``test`` database), or skip/fail."""
    try:
        asyncio.run(_postgres_reachable(POSTGRES_URL))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        service_missing("PostgreSQL", make_url(POSTGRES_URL).render_as_string(), exc)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database shared by the session's tests."""
    name = f"keel_test_{uuid.uuid4().hex[:12]}"

    async def setup() -> str:
        url = await create_postgres_database(postgres_admin_url, name)
        # As `keel migrate` does: the schema, then the services' start-up data.
        context = build_context(Settings(database_url=url, master_key=TEST_MASTER_KEY))
        try:
            await upgrade(context.database)
            await start_services(context)
        finally:
            await context.database.dispose()
        return url

    url = asyncio.run(setup())
    yield url
    asyncio.run(drop_postgres_database(postgres_admin_url, name))


@pytest.fixture
async def empty_postgres_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty (unmigrated) PostgreSQL database of this test alone."""
    name = f"keel_test_{uuid.uuid4().hex[:12]}"
    url = await create_postgres_database(postgres_admin_url, name)
    yield url
    await drop_postgres_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    async def ping() -> None:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (OSError, redis.RedisError) as exc:
        service_missing("Redis", REDIS_URL, exc)
    return REDIS_URL


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Keel's logging as `keel serve` configures it (debug, JSON), put back afterwards: for
    tests that read the log lines (that no secret reaches them, that a notice was logged)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("debug", LogFormat.json)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:], root.level = saved


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a fresh SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / ".keel",
        redis_url=None,
        master_key=TEST_MASTER_KEY,
        public_url="http://keel.test",
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    await upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with lifespan_of(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
        yield http


@pytest.fixture
async def admin(app: FastAPI) -> TenantAdmin:
    """A tenant of this test alone and its administrator's API key (the shared PostgreSQL
    database holds every test's tenants, so a test never assumes it sees the only one)."""
    return await make_tenant_admin(app)


@pytest.fixture
def headers(admin: TenantAdmin) -> dict[str, str]:
    """The administrator's ``Authorization`` header."""
    return admin.headers

"""The service's tests run against a real Keel, started for the session by
``keel_client.testing`` with this project's keel.toml applied: no mocks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.app import create_app
{%- if cookiecutter.use_secrets %}
from {{ cookiecutter.package_name }}.settings import ENV_PREFIX, PAYMENTS_SECRET, SERVICE, get_settings
{%- else %}
from {{ cookiecutter.package_name }}.settings import ENV_PREFIX, get_settings
{%- endif %}

pytest_plugins = ["keel_client.testing"]

#: How long something Keel does in the background may take on a loaded machine.
DEADLINE = 30.0
{%- if cookiecutter.use_secrets %}
#: The payment provider's key the tests store in Keel (a test value, not a secret).
PAYMENTS_API_KEY = "pk_test_template_1234"
{%- endif %}


def poll(check: Callable[[], Any], *, timeout: float = DEADLINE) -> Any:
    """Call ``check`` until it returns something truthy (its value), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {check.__doc__ or check}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def eventually() -> Callable[..., Any]:
    """``eventually(check)``: poll ``check`` until it is truthy (what happens in the background)."""
    return poll


@pytest.fixture(scope="session")
def keel_server_options() -> dict[str, Any]:
    """The embedded Keel's options: on PostgreSQL when ``KEEL_TEST_DATABASE_URL`` names a
    database (``postgresql+asyncpg://...``, migrated by the fixture), else SQLite."""
    url = os.environ.get("KEEL_TEST_DATABASE_URL")
    return {"database_url": url} if url else {}


@pytest.fixture(scope="session")
def admin(keel_server: Any) -> Iterator[httpx.Client]:
    """Keel's API as its administrator: what an operator does to Keel in a test."""
    with httpx.Client(
        base_url=keel_server.url,
        headers={"Authorization": f"Bearer {keel_server.admin_token}"},
        timeout=30.0,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def service_env(keel_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The service's environment: Keel's address, the service account's key, local paths."""
    local = tmp_path_factory.mktemp("service")
    return {
        **keel_server.env,
        f"{ENV_PREFIX}ENVIRONMENT": "development",
        f"{ENV_PREFIX}AUDIT_SPOOL_DIR": str(local / "audit-spool"),
        f"{ENV_PREFIX}FLAGS_CACHE_DIR": str(local / "flags"),
    }
{%- if cookiecutter.use_secrets %}


@pytest.fixture(scope="session")
def payments_secret(admin: httpx.Client) -> str:
    """The service's secret in Keel, readable by its service account through the Vault
    policy its role names (keel.toml: ``secrets:policy:<service>``)."""
    policy = f'path "secret/data/{PAYMENTS_SECRET}" {% raw %}{{ capabilities = ["read"] }}{% endraw %}'
    admin.put(f"/secrets/v1/sys/policies/acl/{SERVICE}", json={"policy": policy}).raise_for_status()
    admin.post(
        f"/secrets/v1/secret/data/{PAYMENTS_SECRET}", json={"data": {"api_key": PAYMENTS_API_KEY}}
    ).raise_for_status()
    return PAYMENTS_API_KEY
{%- endif %}


@pytest.fixture(scope="session")
def environment(
    service_env: dict[str, str],
{%- if cookiecutter.use_secrets %}
    payments_secret: str,
{%- endif %}
) -> Iterator[dict[str, str]]:
    """The process environment of the service, for the session."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in service_env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        yield service_env
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def client(environment: dict[str, str]) -> Iterator[TestClient]:
    """The app, started (its lifespan run) once for the session."""
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="session")
def caller(keel_server: Any) -> dict[str, str]:
    """The headers of a caller holding every permission (Keel's administrator)."""
    return {"Authorization": f"Bearer {keel_server.admin_token}"}


@pytest.fixture(scope="session")
def service_caller(keel_server: Any) -> dict[str, str]:
    """The headers of the service account's own key: authenticated, few permissions."""
    return {"Authorization": f"Bearer {keel_server.service_token}"}


@pytest.fixture
def src_env(environment: dict[str, str]) -> dict[str, str]:
    """The environment of a subprocess running the service's code from src/."""
    source = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **environment, "PYTHONPATH": path}

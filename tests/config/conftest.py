"""The config tests use the auth tests' tenant administrator, and build applications and
environments through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from auth.conftest import TenantAdmin, admin, create_api_key, create_role, create_user

__all__ = ["admin"]

API = "/config/v1"
#: What the config service needs, for the tests that run the real `keel` command.
SERVICES = "auth,secrets,config,audit"


async def member(app: FastAPI, admin: TenantAdmin, *permissions: str) -> dict[str, str]:
    """Headers of a new user whose one role holds ``permissions``."""
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, permissions)
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return {"Authorization": f"Bearer {key}"}


async def new_app(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *environments: str,
    schema: dict[str, Any] | None = None,
) -> str:
    """A new application with ``environments``; its name."""
    name = f"app-{uuid.uuid4().hex[:8]}"
    body: dict[str, Any] = {"name": name}
    if schema is not None:
        body["schema"] = schema
    created = await client.post(f"{API}/apps", headers=headers, json=body)
    assert created.status_code == 201, created.text
    for environment in environments:
        made = await client.post(
            f"{API}/apps/{name}/envs", headers=headers, json={"name": environment}
        )
        assert made.status_code == 201, made.text
    return name


async def write(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    app: str,
    env: str,
    set_values: dict[str, Any] | None = None,
    unset: list[str] | None = None,
    *,
    message: str = "",
    if_match: str | None = None,
) -> httpx.Response:
    extra = {"If-Match": if_match} if if_match else {}
    return await client.patch(
        f"{API}/apps/{app}/envs/{env}",
        headers={**headers, **extra},
        json={"set": set_values or {}, "unset": unset or [], "message": message},
    )


@pytest.fixture
def headers(admin: TenantAdmin) -> dict[str, str]:
    return admin.headers

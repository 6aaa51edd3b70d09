"""The flags tests use the auth tests' tenant administrator, and build environments, flags
and segments through the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from auth.conftest import TenantAdmin, admin, create_api_key, create_role, create_user

__all__ = ["admin"]

API = "/flags/v1"


async def member(app: FastAPI, admin: TenantAdmin, *permissions: str) -> dict[str, str]:
    """Headers of a new user whose one role holds ``permissions``."""
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, permissions)
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return {"Authorization": f"Bearer {key}"}


async def new_environment(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None = None
) -> str:
    key = key or f"env-{uuid.uuid4().hex[:8]}"
    made = await client.post(f"{API}/envs", headers=headers, json={"key": key})
    assert made.status_code == 201, made.text
    return key


async def new_flag(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None = None, **fields: Any
) -> dict[str, Any]:
    key = key or f"flag-{uuid.uuid4().hex[:8]}"
    made = await client.post(f"{API}/flags", headers=headers, json={"key": key, **fields})
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def put_state(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    env: str,
    key: str,
    state: dict[str, Any],
    *,
    if_match: str | None = None,
) -> httpx.Response:
    extra = {"If-Match": if_match} if if_match else {}
    return await client.put(
        f"{API}/envs/{env}/flags/{key}", headers={**headers, **extra}, json=state
    )


@pytest.fixture
def headers(admin: TenantAdmin) -> dict[str, str]:
    return admin.headers

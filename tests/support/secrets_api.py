"""Secrets through the Vault KV v2 API: writes, policies, and members holding policies."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.tenants import TenantAdmin, create_api_key, create_role, create_user

DATA = "/secrets/v1/secret/data"


def vault(key: str) -> dict[str, str]:
    return {"X-Vault-Token": key}


async def write(
    client: httpx.AsyncClient, key: str, path: str, data: dict[str, Any], **options: Any
) -> httpx.Response:
    body: dict[str, Any] = {"data": data}
    if options:
        body["options"] = options
    return await client.post(f"{DATA}/{path}", headers=vault(key), json=body)


async def member(app: FastAPI, admin: TenantAdmin, *policies: str) -> str:
    """An API key of a new user whose one role holds ``policies``."""
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, [f"secrets:policy:{p}" for p in policies])
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return key


async def put_policy(client: httpx.AsyncClient, admin: TenantAdmin, name: str, hcl: str) -> None:
    response = await client.put(
        f"/secrets/v1/sys/policies/acl/{name}", headers=vault(admin.api_key), json={"policy": hcl}
    )
    assert response.status_code == 204, response.text

"""Password logins through the auth API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.tenants import PASSWORD


async def login(
    client: httpx.AsyncClient, tenant: str, username: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/v1/login", json={"tenant": tenant, "username": username, "password": password}
    )


async def login_tokens(
    client: httpx.AsyncClient, tenant: str, username: str, password: str = PASSWORD
) -> dict[str, Any]:
    response = await login(client, tenant, username, password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body

"""Applications and environments of the config service, built through its API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

API = "/config/v1"
#: What the config service needs, for the tests that run the real `keel` command.
SERVICES = "auth,secrets,config,audit"


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

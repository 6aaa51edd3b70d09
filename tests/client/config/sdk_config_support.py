"""Helpers of the config SDK tests: building an application through the API, and waiting for
clients to reach a revision."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import httpx

API = "/config/v1"


async def new_application(
    http: httpx.AsyncClient, headers: dict[str, str], values: dict[str, Any] | None = None
) -> str:
    """A new application with environment ``production`` holding ``values``; its name."""
    name = f"app-{uuid.uuid4().hex[:8]}"
    created = await http.post(f"{API}/apps", headers=headers, json={"name": name})
    assert created.status_code == 201, created.text
    made = await http.post(f"{API}/apps/{name}/envs", headers=headers, json={"name": "production"})
    assert made.status_code == 201, made.text
    if values:
        await write(http, headers, name, values)
    return name


async def write(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    name: str,
    set_values: dict[str, Any] | None = None,
    unset: list[str] | None = None,
) -> int:
    """One change set on ``name``/production; the new revision."""
    answer = await http.patch(
        f"{API}/apps/{name}/envs/production",
        headers=headers,
        json={"set": set_values or {}, "unset": unset or []},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"], answer.text
    return int(answer.json()["revision"]["number"])


async def eventually(
    condition: Callable[[], bool], *, timeout: float = 10.0, message: str = ""
) -> None:
    """Wait until ``condition()`` holds (polled every 10 ms); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def lagging(clients: Iterable[Any], revision: int) -> list[int]:
    """The revisions of the clients not yet at ``revision``."""
    return [client.revision for client in clients if client.revision != revision]

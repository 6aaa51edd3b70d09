"""Helpers of the flags SDK tests: an environment with one flag of each kind, built through
the API, toggles, and waiting on a client's change events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from keel_client.flags import FlagsChange, FlagsClient

API = "/flags/v1"

#: A boolean flag on for users at corp.com (rule ``corp``), ``beta-1`` targeted, off otherwise.
CHECKOUT = "checkout-v2"
#: A string flag: a 50/50 rollout for everybody (fallthrough), an experiment.
BUTTON = "button-color"
#: A number flag serving an integer, and one serving a float.
WORKERS = "workers"
RATIO = "ratio"
#: A json flag serving an object.
LIMITS = "limits"
#: A boolean flag that is off (serving ``off``).
DARK = "dark-launch"
#: A boolean flag whose prerequisite (DARK, which is off) fails.
NEEDS_DARK = "needs-dark"


@dataclass(frozen=True)
class Environment:
    key: str
    headers: dict[str, str]


async def _created(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code in (200, 201), answer.text
    body: dict[str, Any] = answer.json()
    return body


async def build_environment(http: httpx.AsyncClient, headers: dict[str, str]) -> Environment:
    env = f"env-{uuid.uuid4().hex[:8]}"
    await _created(await http.post(f"{API}/envs", headers=headers, json={"key": env}))
    flags: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (
            CHECKOUT,
            {"type": "boolean"},
            {
                "on": True,
                "off_variation": "off",
                "targets": [{"variation": "on", "values": ["beta-1"]}],
                "rules": [
                    {
                        "id": "corp",
                        "clauses": [
                            {"attribute": "email", "op": "ends_with", "values": ["@corp.com"]}
                        ],
                        "serve": {"variation": "on"},
                    }
                ],
                "fallthrough": {"variation": "off"},
            },
        ),
        (
            BUTTON,
            {
                "type": "string",
                "experiment": True,
                "variations": [{"id": "blue", "value": "blue"}, {"id": "green", "value": "green"}],
            },
            {
                "on": True,
                "off_variation": "blue",
                "fallthrough": {
                    "rollout": {
                        "variations": [
                            {"variation": "blue", "weight": 50_000},
                            {"variation": "green", "weight": 50_000},
                        ]
                    }
                },
            },
        ),
        (
            WORKERS,
            {
                "type": "number",
                "variations": [{"id": "few", "value": 4}, {"id": "many", "value": 16}],
            },
            {"on": True, "off_variation": "few", "fallthrough": {"variation": "many"}},
        ),
        (
            RATIO,
            {
                "type": "number",
                "variations": [{"id": "low", "value": 0.25}, {"id": "one", "value": 1}],
            },
            {"on": True, "off_variation": "low", "fallthrough": {"variation": "low"}},
        ),
        (
            LIMITS,
            {
                "type": "json",
                "variations": [
                    {"id": "small", "value": {"per_minute": 60}},
                    {"id": "list", "value": ["a", "b"]},
                    {"id": "text", "value": "not an object"},
                ],
            },
            {"on": True, "off_variation": "small", "fallthrough": {"variation": "small"}},
        ),
        (DARK, {"type": "boolean"}, {"on": False, "off_variation": "off",
                                     "fallthrough": {"variation": "on"}}),
        (
            NEEDS_DARK,
            {"type": "boolean"},
            {
                "on": True,
                "off_variation": "off",
                "prerequisites": [{"key": DARK, "variation": "on"}],
                "fallthrough": {"variation": "on"},
            },
        ),
    ]  # fmt: skip
    for key, definition, state in flags:
        await _created(
            await http.post(f"{API}/flags", headers=headers, json={"key": key, **definition})
        )
        await _created(await http.put(f"{API}/envs/{env}/flags/{key}", headers=headers, json=state))
    return Environment(env, headers)


async def toggle(http: httpx.AsyncClient, env: Environment, key: str, on: bool) -> int:
    """Turn ``key`` on or off; the environment's new snapshot version."""
    await _created(
        await http.post(f"{API}/envs/{env.key}/flags/{key}/toggle", headers=env.headers,
                        json={"on": on})
    )  # fmt: skip
    answer = await http.get(f"{API}/envs/{env.key}", headers=env.headers)
    return int((await _created(answer))["version"])


class ChangeWaiter:
    """Records a client's change events; :meth:`until` waits for one that reaches a version."""

    def __init__(self, client: FlagsClient) -> None:
        self.changes: list[FlagsChange] = []
        self._arrived = asyncio.Condition()
        client.on_change(self._record)

    async def _record(self, change: FlagsChange) -> None:
        async with self._arrived:
            self.changes.append(change)
            self._arrived.notify_all()

    async def until(self, version: int, timeout: float = 10.0) -> FlagsChange:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(
                lambda: bool(self.changes) and self.changes[-1].version >= version
            )
        return self.changes[-1]


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

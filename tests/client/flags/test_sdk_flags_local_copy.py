"""``FlagsClient``'s local copy against a real Keel served over TCP (uvicorn), on SQLite and
PostgreSQL: a toggle is in use and the callbacks have run before the file is written; closing
waits for that write, so a restart while Keel is down starts from the toggle."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from keel_client.flags import FlagsChange, FlagsClient
from keel_client.http import RetryPolicy
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin

API = "/flags/v1"
FLAG = "checkout-v2"
USER = {"key": "user-1"}


async def _environment(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """A new environment where boolean flag ``FLAG`` is on for everybody."""
    env = f"env-{uuid.uuid4().hex[:8]}"
    for answer in (
        await http.post(f"{API}/envs", headers=headers, json={"key": env}),
        await http.post(f"{API}/flags", headers=headers, json={"key": FLAG, "type": "boolean"}),
        await http.put(
            f"{API}/envs/{env}/flags/{FLAG}",
            headers=headers,
            json={"on": True, "off_variation": "off", "fallthrough": {"variation": "on"}},
        ),
    ):
        assert answer.status_code in (200, 201), answer.text
    return env


async def _toggle(http: httpx.AsyncClient, headers: dict[str, str], env: str, on: bool) -> int:
    """Turn ``FLAG`` on or off; the environment's new snapshot version."""
    toggled = await http.post(
        f"{API}/envs/{env}/flags/{FLAG}/toggle", headers=headers, json={"on": on}
    )
    assert toggled.status_code in (200, 201), toggled.text
    answer = await http.get(f"{API}/envs/{env}", headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


def _saved_version(path: Path) -> int:
    return int(json.loads(path.read_text())["revision"])


async def _eventually(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (polled every 10 ms); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def test_callbacks_run_with_the_new_store_before_the_local_copy_is_written(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    env = await _environment(client, admin.headers)
    cache = tmp_path / "copies" / "flags.json"
    # (version called back, the flag in the store, version on disk), during each callback
    during: list[tuple[int, bool, int]] = []
    async with FlagsClient(
        env, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ) as flags:
        flags.on_change(lambda change: during.append(
            (change.version, flags.is_enabled(FLAG, USER), _saved_version(cache))
        ))  # fmt: skip
        before = _saved_version(cache)
        assert before == flags.version
        version = await _toggle(client, admin.headers, env, on=False)
        await _eventually(lambda: bool(during))
        assert during == [(version, False, before)]
        await _eventually(lambda: _saved_version(cache) == version, timeout=30)
        assert list(cache.parent.iterdir()) == [cache]  # no temporary file left over


async def test_a_restart_with_keel_down_starts_from_the_toggle_seen_before_closing(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    env = await _environment(client, admin.headers)
    cache = tmp_path / "flags.json"
    flags = FlagsClient(env, keel_url, auth=admin.api_key, cache_path=cache, send_events=False)
    called_back = asyncio.Event()
    flags.on_change(lambda change: called_back.set())
    async with flags:
        assert flags.is_enabled(FLAG, USER)
        version = await _toggle(client, admin.headers, env, on=False)
        async with asyncio.timeout(10):
            await called_back.wait()
    # aclose() waited for the write that follows the callbacks.
    assert _saved_version(cache) == version

    nowhere = f"http://127.0.0.1:{free_port()}"
    async with FlagsClient(
        env, nowhere, auth=admin.api_key, cache_path=cache, send_events=False,
        retry=RetryPolicy(max_retries=0),
    ) as restarted:  # fmt: skip
        assert restarted.loaded_from == "file"
        assert restarted.version == version
        assert restarted.is_enabled(FLAG, USER, default=True) is False


async def test_closing_during_a_slow_callback_still_writes_the_toggle_to_disk(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    env = await _environment(client, admin.headers)
    cache = tmp_path / "flags.json"
    flags = FlagsClient(env, keel_url, auth=admin.api_key, cache_path=cache, send_events=False)
    in_callback = asyncio.Event()

    async def slow(change: FlagsChange) -> None:
        in_callback.set()
        await asyncio.sleep(60)  # a long callback: closing interrupts it

    flags.on_change(slow)
    async with flags:
        before = flags.version
        version = await _toggle(client, admin.headers, env, on=False)
        async with asyncio.timeout(10):
            await in_callback.wait()
        assert _saved_version(cache) == before  # the callbacks come first
    assert _saved_version(cache) == version

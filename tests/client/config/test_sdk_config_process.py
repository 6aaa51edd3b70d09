"""The config SDK against real ``keel serve`` processes: a service starts from its local copy
while Keel is stopped and catches up when Keel is back (SQLite), and a write to one of two
replicas sharing PostgreSQL and Redis reaches a client following the other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel_client.config import ConfigChange, ConfigClient, load_snapshot
from keel_client.http import RetryPolicy
from tests.client.config.sdk_config_support import eventually
from tests.support.config_api import SERVICES
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import (
    ADMIN_KEY,
    KEEL,
    KeelServer,
    _server,
    free_port,
    keel_env,
    keel_server,
)

SNAPSHOT = "/config/v1/apps/billing/envs/production"


def _initialised(cwd: Path, env: dict[str, str]) -> str:
    """``keel migrate`` and ``keel init`` (in-process: only ``keel serve`` needs a process of
    its own here); the administrator's API key."""
    migrated = invoke_keel("migrate", cwd=cwd, env=env)
    assert migrated.returncode == 0, migrated.stderr
    initialised = invoke_keel("init", cwd=cwd, env=env)
    key = ADMIN_KEY.search(initialised.stdout)
    assert key is not None, initialised.stdout + initialised.stderr
    return key.group(1)


def _billing(base_url: str, api_key: str, values: dict[str, object]) -> None:
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as http:
        assert http.post("/config/v1/apps", json={"name": "billing"}).status_code == 201
        made = http.post("/config/v1/apps/billing/envs", json={"name": "production"})
        assert made.status_code == 201
        assert http.patch(SNAPSHOT, json={"set": values}).status_code == 200


async def _patch(base_url: str, api_key: str, values: dict[str, object]) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.patch(
            SNAPSHOT, headers={"Authorization": f"Bearer {api_key}"}, json={"set": values}
        )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["revision"]["number"])


async def test_a_service_starts_from_its_local_copy_while_keel_is_stopped(
    tmp_path: Path,
) -> None:
    env = keel_env(KEEL_SERVICES=SERVICES)
    api_key = await asyncio.to_thread(_initialised, tmp_path, env)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "service" / "billing-production.json"
    command = [KEEL, "serve", "--port", str(port)]

    with _server(command, port, tmp_path, env):
        _billing(base_url, api_key, {"workers": 8})
        async with ConfigClient(
            "billing", "production", base_url, auth=api_key, cache_path=cache
        ) as config:
            assert config.loaded_from == "server"

    # Keel is stopped: the service still starts, from the last known good snapshot.
    config = ConfigClient(
        "billing",
        "production",
        base_url,
        auth=api_key,
        cache_path=cache,
        retry=RetryPolicy(max_retries=0),
        max_reconnect_delay=1.0,
    )
    changes: list[ConfigChange] = []
    config.on_change(changes.append)
    async with config:
        assert config.loaded_from == "file"
        assert (config.revision, config.get("workers")) == (2, 8)
        snapshot, source = await asyncio.to_thread(
            load_snapshot, "billing", "production", base_url, auth=api_key, cache_path=cache,
            retry=RetryPolicy(max_retries=0),
        )  # fmt: skip
        assert (source, snapshot.values) == ("file", {"workers": 8})

        # Keel is back (same port, same database): the client catches up by itself.
        with _server(command, port, tmp_path, env):
            assert await _patch(base_url, api_key, {"workers": 16}) == 3
            await eventually(lambda: len(changes) == 1, timeout=30)
            assert config.revision == 3
            assert str(config.loaded_from) == "server"  # moved on since the check above
            assert config.get("workers") == 16
    assert [(c.old_revision, c.revision, c.keys) for c in changes] == [(2, 3, ("workers",))]


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_admin_url: str, redis_url: str
) -> Iterator[tuple[KeelServer, KeelServer, str]]:
    """Two servers on one new database and Redis, and the administrator's API key."""
    name = f"keel_sdkcfg_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_postgres_database(postgres_admin_url, name))
    env = keel_env(KEEL_DATABASE_URL=url, KEEL_REDIS_URL=redis_url, KEEL_SERVICES=SERVICES)
    try:
        api_key = _initialised(tmp_path, env)
        with keel_server(tmp_path, env) as first, keel_server(tmp_path, env) as second:
            yield first, second, api_key
    finally:
        asyncio.run(drop_postgres_database(postgres_admin_url, name))


@pytest.mark.postgres
async def test_a_write_to_one_replica_reaches_clients_of_the_other(
    replicas: tuple[KeelServer, KeelServer, str], tmp_path: Path
) -> None:
    first, second, api_key = replicas
    _billing(first.base_url, api_key, {"workers": 8})
    clients = [
        ConfigClient("billing", "production", server.base_url, auth=api_key, persist=False)
        for server in (first, second, second)
    ]
    try:
        await asyncio.gather(*(config.start() for config in clients))
        assert [config.get("workers") for config in clients] == [8, 8, 8]
        assert await _patch(first.base_url, api_key, {"workers": 9}) == 3
        await eventually(lambda: all(config.revision == 3 for config in clients), timeout=10)
        assert [config.get("workers") for config in clients] == [9, 9, 9]
    finally:
        await asyncio.gather(*(config.aclose() for config in clients))

"""``ConfigClient`` against a real Keel served over TCP (uvicorn), on SQLite and PostgreSQL:
the snapshot load, a change reaching 100 clients, a reconnect behind a proxy that cuts the
line without a revision's keys being missed, callbacks, the local copy, errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from keel_client.config import (
    ConfigChange,
    ConfigClient,
    ConfigNotFound,
    ConfigPermissionDenied,
    ConfigUnavailable,
    SyncConfigClient,
)
from keel_client.http import RetryPolicy
from tests.client.config.sdk_config_support import eventually, lagging, new_application, write
from tests.support.keel_process import free_port
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin, member

#: A client that gives up on an unreachable Keel at once (the tests of the local copy).
NO_RETRY = RetryPolicy(max_retries=0)


async def test_start_loads_the_snapshot_and_get_reads_memory_only(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    values: dict[str, Any] = {
        "workers": 8,
        "limits": {"per_minute": 600},
        "db_password": {"$secret": "apps/billing/db#password"},
    }
    name = await new_application(client, admin.headers, values)
    cache = tmp_path / "cache" / "billing.json"
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        config = ConfigClient(
            name, "production", f"http://127.0.0.1:{proxy.port}", auth=admin.api_key,
            cache_path=cache,
        )  # fmt: skip
        with pytest.raises(RuntimeError, match="before start"):
            config.get("workers")
        async with config:
            assert config.revision == 2
            assert config.loaded_from == "server"
            assert config.get("workers") == 8
            assert config.get("limits") == {"per_minute": 600}
            assert config.get("absent") is None
            assert config.get("absent", 3) == 3
            # A secret reference comes back as stored: resolving is asked for explicitly.
            assert config.get("db_password") == {"$secret": "apps/billing/db#password"}
            assert dict(config.values) == values

            # The last known good snapshot is on disk, for its owner only.
            assert stat.S_IMODE(cache.stat().st_mode) == 0o600
            assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
            saved = json.loads(cache.read_text())
            assert saved["revision"] == 2
            assert saved["values"] == values
            assert (saved["application"], saved["environment"]) == (name, "production")
            assert list(cache.parent.iterdir()) == [cache]  # no temporary file left over

            # Keel unreachable: get still answers, from memory, at once.
            await proxy.cut()
            started = asyncio.get_running_loop().time()
            assert config.get("workers") == 8
            assert asyncio.get_running_loop().time() - started < 0.01


async def test_a_change_reaches_100_concurrent_clients(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str
) -> None:
    name = await new_application(client, admin.headers, {"workers": 4})
    clients = [
        ConfigClient(name, "production", keel_url, auth=admin.api_key, persist=False)
        for _ in range(100)
    ]
    # Started ten at a time, as a fleet rolls out: a hundred at once would have Keel's pool
    # of 20 database connections queue each start's reads behind the others' audit writes.
    gate = asyncio.Semaphore(10)

    async def start(config: ConfigClient) -> None:
        async with gate:
            await config.start()

    try:
        await asyncio.gather(*(start(config) for config in clients))
        assert lagging(clients, 2) == []
        revision = await write(client, admin.headers, name, {"workers": 16, "region": "eu"})
        await eventually(
            lambda: not lagging(clients, revision),
            timeout=30,
            message=f"clients behind: {lagging(clients, revision)}",
        )
        assert all(config.get("workers") == 16 for config in clients)
        assert all(config.get("region") == "eu" for config in clients)
    finally:
        await asyncio.gather(*(config.aclose() for config in clients))


async def test_a_reconnect_after_a_dropped_connection_misses_no_revision(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    """The guarantee: the callbacks form an unbroken chain of revisions (each one's
    ``old_revision`` is the previous one's ``revision``) ending at the latest, and every key
    changed by a revision missed while disconnected is named; revisions that came during
    the outage may be coalesced into one change."""
    name = await new_application(client, admin.headers, {"a": 1})
    changes: list[ConfigChange] = []
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        config = ConfigClient(
            name,
            "production",
            f"http://127.0.0.1:{proxy.port}",
            auth=admin.api_key,
            cache_path=tmp_path / "copy.json",
            max_reconnect_delay=2.0,
        )
        config.on_change(changes.append)
        async with config:
            assert await write(client, admin.headers, name, {"a": 2}) == 3
            await eventually(lambda: len(changes) == 1)

            await proxy.cut()  # the stream dies; two revisions go out meanwhile
            assert await write(client, admin.headers, name, {"b": 1}) == 4
            assert await write(client, admin.headers, name, {"c": 1}, unset=["a"]) == 5
            await asyncio.sleep(0.3)
            assert config.revision == 3  # still serving what it had
            assert config.get("a") == 2
            await proxy.restore()

            # The values first, then the callbacks, then the local copy.
            await eventually(lambda: bool(changes) and changes[-1].revision == 5, timeout=20)
            assert config.revision == 5
            assert dict(config.values) == {"b": 1, "c": 1}
            await eventually(lambda: _saved_revision(tmp_path / "copy.json") == 5)

    chain = [(change.old_revision, change.revision) for change in changes]
    assert chain[0] == (2, 3)
    assert chain[-1][1] == 5
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(chain))
    assert changes[0].keys == ("a",)
    missed = set().union(*(change.keys for change in changes[1:]))
    assert missed == {"a", "b", "c"}  # b and c added, a removed: none missed


def _saved_revision(path: Path) -> int:
    return int(json.loads(path.read_text())["revision"])


async def test_callbacks_run_with_the_new_values_before_the_local_copy_is_written(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    """A change reaches the service's code without waiting on the disk; the file follows
    within milliseconds."""
    name = await new_application(client, admin.headers, {"workers": 4})
    cache = tmp_path / "copies" / "copy.json"
    # (revision called back, value in memory, revision on disk), during each callback
    during: list[tuple[int, Any, int]] = []
    async with ConfigClient(
        name, "production", keel_url, auth=admin.api_key, cache_path=cache
    ) as config:
        config.on_change(lambda change: during.append(
            (change.revision, config.get("workers"), _saved_revision(cache))
        ))  # fmt: skip
        assert _saved_revision(cache) == 2
        revision = await write(client, admin.headers, name, {"workers": 8})
        await eventually(lambda: bool(during))
        assert during == [(revision, 8, 2)]
        await eventually(lambda: _saved_revision(cache) == revision, timeout=30)
        assert json.loads(cache.read_text())["values"] == {"workers": 8}
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        assert list(cache.parent.iterdir()) == [cache]  # no temporary file left over


async def test_a_restart_with_keel_down_starts_from_the_change_seen_before_closing(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    """A change, the client closed right after its callback (its local copy still being
    written), then a restart while Keel is unreachable: the service runs on that change."""
    name = await new_application(client, admin.headers, {"workers": 4})
    cache = tmp_path / "copy.json"
    config = ConfigClient(name, "production", keel_url, auth=admin.api_key, cache_path=cache)
    called_back = asyncio.Event()
    config.on_change(lambda change: called_back.set())
    async with config:
        revision = await write(client, admin.headers, name, {"workers": 8, "region": "eu"})
        async with asyncio.timeout(10):
            await called_back.wait()
    # aclose() waited for the write that follows the callbacks.
    assert _saved_revision(cache) == revision

    nowhere = f"http://127.0.0.1:{free_port()}"
    async with ConfigClient(
        name, "production", nowhere, auth=admin.api_key, cache_path=cache, retry=NO_RETRY
    ) as restarted:
        assert restarted.loaded_from == "file"
        assert restarted.revision == revision
        assert dict(restarted.values) == {"workers": 8, "region": "eu"}


async def test_closing_during_a_slow_callback_still_writes_the_change_to_disk(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, {"workers": 4})
    cache = tmp_path / "copy.json"
    config = ConfigClient(name, "production", keel_url, auth=admin.api_key, cache_path=cache)
    in_callback = asyncio.Event()

    async def slow(change: ConfigChange) -> None:
        in_callback.set()
        await asyncio.sleep(60)  # a long callback: closing interrupts it

    config.on_change(slow)
    async with config:
        revision = await write(client, admin.headers, name, {"workers": 8})
        async with asyncio.timeout(10):
            await in_callback.wait()
        assert _saved_revision(cache) == 2  # the callbacks come first
    assert config.revision == revision
    assert _saved_revision(cache) == revision


async def test_callbacks_sync_and_async_and_a_failing_one_breaks_nothing(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    keel_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    seen_sync: list[tuple[int, int, tuple[str, ...]]] = []
    seen_async: list[int] = []

    def broken(change: ConfigChange) -> None:
        raise ValueError("a bug in the service's callback")

    async def slow(change: ConfigChange) -> None:
        await asyncio.sleep(0.01)
        seen_async.append(change.revision)

    async with ConfigClient(
        name, "production", keel_url, auth=admin.api_key, persist=False
    ) as config:
        config.on_change(broken)
        config.on_change(lambda change: seen_sync.append(
            (change.old_revision, change.revision, change.keys)
        ))  # fmt: skip
        config.on_change(slow)
        with caplog.at_level(logging.ERROR, logger="keel_client.config"):
            await write(client, admin.headers, name, {"a": 2, "b": True})
            await eventually(lambda: seen_async == [3])
            await write(client, admin.headers, name, unset=["b"])
            await eventually(lambda: seen_async == [3, 4])
        assert seen_sync == [(2, 3, ("a", "b")), (3, 4, ("b",))]
        failures = [r for r in caplog.records if "callback" in r.getMessage()]
        assert len(failures) == 2
        assert "broken" in failures[0].getMessage()
        config.remove_callback(slow)
        await write(client, admin.headers, name, {"a": 3})
        await eventually(lambda: len(seen_sync) == 3)
        assert seen_async == [3, 4]


async def test_an_unusable_local_copy_is_replaced_when_keel_answers(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    keel_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    cache = tmp_path / "copy.json"
    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="keel_client.config"):
        async with ConfigClient(
            name, "production", keel_url, auth=admin.api_key, cache_path=cache
        ) as config:
            assert config.get("a") == 1
    assert any("is not JSON" in record.getMessage() for record in caplog.records)
    assert json.loads(cache.read_text())["values"] == {"a": 1}


async def test_keel_unreachable_starts_from_the_local_copy_or_fails_clearly(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    cache = tmp_path / "copy.json"
    async with ConfigClient(name, "production", keel_url, auth=admin.api_key, cache_path=cache):
        pass
    nowhere = f"http://127.0.0.1:{free_port()}"

    async with ConfigClient(
        name, "production", nowhere, auth=admin.api_key, cache_path=cache, retry=NO_RETRY
    ) as config:
        assert config.loaded_from == "file"
        assert (config.revision, config.get("a")) == (2, 1)

    # No local copy at all.
    with pytest.raises(ConfigUnavailable, match=r"no local copy at .*absent\.json") as missing:
        await ConfigClient(
            name,
            "production",
            nowhere,
            auth=admin.api_key,
            cache_path=tmp_path / "absent.json",
            retry=NO_RETRY,
        ).start()
    assert missing.value.reasons[0].startswith("Keel: ")
    # An unusable one: the error says what is wrong with it.
    for content, reason in (
        ("{not json", "is not JSON"),
        (json.dumps({"format": 1, "revision": "x", "values": {}}), "no valid revision"),
        (
            json.dumps(
                {"format": 1, "application": "other", "environment": "production",
                 "revision": 3, "values": {}}
            ),
            "holds other/production",
        ),
    ):  # fmt: skip
        cache.write_text(content)
        with pytest.raises(ConfigUnavailable, match=reason):
            await ConfigClient(
                name, "production", nowhere, auth=admin.api_key, cache_path=cache, retry=NO_RETRY
            ).start()


async def test_the_client_catches_up_when_keel_comes_back(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    cache = tmp_path / "copy.json"
    port = urlsplit(keel_url).port or 0
    async with tcp_proxy("127.0.0.1", port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        async with ConfigClient(name, "production", url, auth=admin.api_key, cache_path=cache):
            pass
        await proxy.cut()
        changes: list[ConfigChange] = []
        async with ConfigClient(
            name,
            "production",
            url,
            auth=admin.api_key,
            cache_path=cache,
            retry=NO_RETRY,
            max_reconnect_delay=1.0,
        ) as config:
            config.on_change(changes.append)
            assert config.loaded_from == "file"
            await write(client, admin.headers, name, {"a": 2})
            await proxy.restore()
            await eventually(lambda: len(changes) == 1, timeout=20)
            assert config.revision == 3
            assert str(config.loaded_from) == "server"  # moved on since the check above
            assert config.get("a") == 2
    assert [(c.old_revision, c.revision, c.keys) for c in changes] == [(2, 3, ("a",))]


async def test_missing_environment_and_missing_permission_are_clear_errors(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    with pytest.raises(ConfigNotFound) as missing:
        await ConfigClient(name, "staging", keel_url, auth=admin.api_key, persist=False).start()
    assert (missing.value.application, missing.value.environment) == (name, "staging")
    assert missing.value.status == 404

    stranger = await member(app, admin, "config:someone-else:read")
    token = stranger["Authorization"].removeprefix("Bearer ")
    with pytest.raises(ConfigPermissionDenied, match=f"config:{name}:read"):
        await ConfigClient(name, "production", keel_url, auth=token, persist=False).start()
    with pytest.raises(ValueError, match="invalid application name"):
        ConfigClient("../etc", "production", keel_url)


async def test_resolved_secrets_are_read_but_never_written_to_disk(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    written = await client.post(
        "/secrets/v1/secret/data/apps/billing/db",
        headers={"X-Vault-Token": admin.api_key},
        json={"data": {"password": "s3cr3t-value"}},
    )
    assert written.status_code == 200, written.text
    name = await new_application(
        client, admin.headers, {"db_password": {"$secret": "apps/billing/db#password"}}
    )
    cache = tmp_path / "copy.json"
    async with ConfigClient(
        name, "production", keel_url, auth=admin.api_key, cache_path=cache, resolve_secrets=True
    ) as config:
        assert config.get("db_password") == "s3cr3t-value"
    assert not cache.exists()


async def test_the_sync_client_follows_changes_on_its_own_thread(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    name = await new_application(client, admin.headers, {"a": 1})
    config = SyncConfigClient(
        name, "production", keel_url, auth=admin.api_key, cache_path=tmp_path / "copy.json"
    )
    seen: list[int] = []
    config.on_change(lambda change: seen.append(change.revision))
    # Started from a worker thread: this test's loop serves Keel meanwhile.
    await asyncio.to_thread(config.start)
    try:
        assert (config.revision, config.get("a")) == (2, 1)
        await write(client, admin.headers, name, {"a": 5})
        await eventually(lambda: seen == [3])
        assert config.get("a") == 5
        assert seen == [3]
    finally:
        await asyncio.to_thread(config.close)
    assert json.loads((tmp_path / "copy.json").read_text())["revision"] == 3

"""``FlagsClient`` against a real Keel served over TCP (uvicorn), on SQLite and PostgreSQL:
the snapshot load and local evaluation, a toggle reaching the client through the watch,
serving the last snapshot while Keel is away, starting from the local copy (in this process
and in a fresh one), and defaults on every error."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from keel_client.flags import (
    ErrorKind,
    FlagsClient,
    FlagsNotFound,
    FlagsPermissionDenied,
    FlagsUnavailable,
    ReasonKind,
    SyncFlagsClient,
)
from keel_client.http import RetryPolicy
from tests.client.flags.flags_sdk_support import (
    BUTTON,
    CHECKOUT,
    DARK,
    LIMITS,
    NEEDS_DARK,
    RATIO,
    WORKERS,
    ChangeWaiter,
    Environment,
    eventually,
    toggle,
)
from tests.support.keel_process import free_port
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin, member

#: A client that gives up on an unreachable Keel at once (the tests of the local copy).
NO_RETRY = RetryPolicy(max_retries=0)
CORP = {"key": "user-7", "email": "ana@corp.com"}
OTHER = {"key": "user-8", "email": "bob@example.com"}


async def test_start_loads_the_snapshot_and_evaluates_locally(
    admin: TenantAdmin, environment: Environment, keel_url: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "flags.json"
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ) as flags:
        assert flags.loaded_from == "server"
        assert flags.version >= 7
        assert set(flags.keys()) == {CHECKOUT, BUTTON, WORKERS, RATIO, LIMITS, DARK, NEEDS_DARK}

        assert flags.is_enabled(CHECKOUT, CORP) is True
        assert flags.is_enabled(CHECKOUT, OTHER) is False
        detail = flags.variation_detail(CHECKOUT, CORP, False)
        assert (detail.value, detail.variation) == (True, "on")
        assert detail.reason.to_dict() == {"kind": "RULE_MATCH", "rule_id": "corp", "rule_index": 0}
        assert flags.variation_detail(CHECKOUT, {"key": "beta-1"}).reason.kind == "TARGET_MATCH"
        assert flags.variation_detail(DARK, OTHER, True).reason.kind == ReasonKind.OFF
        failed = flags.variation_detail(NEEDS_DARK, OTHER, True)
        assert (failed.value, failed.reason.prerequisite_key) == (False, DARK)

        assert flags.variation(WORKERS, OTHER, 1) == 16
        assert flags.variation(RATIO, OTHER, 1.0) == 0.25
        assert flags.variation(LIMITS, OTHER, {}) == {"per_minute": 60}
        color = flags.variation_detail(BUTTON, OTHER, "red")
        assert color.value in ("blue", "green")
        assert color.reason.in_experiment
        # Sticky: the same context gets the same variation.
        assert all(flags.variation(BUTTON, OTHER, "red") == color.value for _ in range(20))

        # The last known good snapshot is on disk, for its owner only.
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
        saved = json.loads(cache.read_text())
        assert saved["revision"] == flags.version
        assert saved["values"]["environment"] == environment.key
        assert set(saved["values"]["flags"]) == set(flags.keys())
        assert list(cache.parent.iterdir()) == [cache]  # no temporary file left over


async def test_a_toggle_reaches_the_running_client(
    client: httpx.AsyncClient, admin: TenantAdmin, environment: Environment, keel_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    cache = tmp_path / "flags.json"
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ) as flags:
        waiter = ChangeWaiter(flags)
        assert flags.is_enabled(CHECKOUT, CORP)

        version = await toggle(client, environment, CHECKOUT, on=False)
        change = await waiter.until(version)
        assert change.keys == (CHECKOUT,)
        assert change.version == version == flags.version
        assert flags.is_enabled(CHECKOUT, CORP) is False
        assert flags.variation_detail(CHECKOUT, CORP).reason.kind == ReasonKind.OFF

        version = await toggle(client, environment, CHECKOUT, on=True)
        await waiter.until(version)
        assert flags.is_enabled(CHECKOUT, CORP) is True
        # Each change is one link of an unbroken chain.
        chain = [(change.old_version, change.version) for change in waiter.changes]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))
        # The local copy follows.
        await eventually(lambda: json.loads(cache.read_text())["revision"] == version)


async def test_keeps_serving_the_last_snapshot_while_keel_is_away_and_catches_up(
    client: httpx.AsyncClient, admin: TenantAdmin, environment: Environment, keel_url: str
) -> None:
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        flags = FlagsClient(
            environment.key, f"http://127.0.0.1:{proxy.port}", auth=admin.api_key,
            persist=False, send_events=False, max_reconnect_delay=0.5,
        )  # fmt: skip
        async with flags:
            waiter = ChangeWaiter(flags)
            await proxy.cut()
            version = await toggle(client, environment, CHECKOUT, on=False)
            # Away: the old snapshot still answers, at once and without raising.
            for _ in range(3):
                assert flags.is_enabled(CHECKOUT, CORP) is True
                assert flags.variation(WORKERS, OTHER, 1) == 16
            assert flags.version < version
            await proxy.restore()
            await waiter.until(version, timeout=20)
            assert flags.is_enabled(CHECKOUT, CORP) is False


async def test_a_fresh_client_starts_from_the_local_copy_when_keel_is_down(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    environment: Environment,
    keel_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "flags.json"
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ) as flags:
        waiter = ChangeWaiter(flags)
        version = await toggle(client, environment, CHECKOUT, on=False)
        await waiter.until(version)
    assert json.loads(cache.read_text())["revision"] == version
    nowhere = f"http://127.0.0.1:{free_port()}"

    with caplog.at_level(logging.WARNING, logger="keel_client.flags"):
        async with FlagsClient(
            environment.key, nowhere, auth=admin.api_key, cache_path=cache, retry=NO_RETRY,
            send_events=False,
        ) as offline:  # fmt: skip
            assert offline.loaded_from == "file"
            assert offline.version == version
            assert offline.is_enabled(CHECKOUT, CORP) is False  # the toggled snapshot
            assert offline.variation(WORKERS, OTHER, 1) == 16
    assert any("starting from the local copy" in r.getMessage() for r in caplog.records)

    # A new process, with the blocking client, from the same file.
    script = textwrap.dedent(
        f"""
        import json
        from keel_client.flags import SyncFlagsClient
        from keel_client.http import RetryPolicy
        with SyncFlagsClient({environment.key!r}, {nowhere!r}, auth="x",
                             cache_path={str(cache)!r}, retry=RetryPolicy(max_retries=0),
                             send_events=False) as flags:
            print(json.dumps([flags.loaded_from, flags.version,
                              flags.is_enabled({CHECKOUT!r}, {CORP!r}),
                              flags.variation({WORKERS!r}, {{"key": "u"}}, 1)]))
        """
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    assert json.loads(out.decode().strip().splitlines()[-1]) == ["file", version, False, 16]


async def test_with_a_local_copy_keel_revalidates_it_and_the_client_catches_up(
    client: httpx.AsyncClient, admin: TenantAdmin, environment: Environment, keel_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    cache = tmp_path / "flags.json"
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ):
        pass
    version = await toggle(client, environment, CHECKOUT, on=False)  # while no client runs
    async with FlagsClient(
        environment.key, keel_url, auth=admin.api_key, cache_path=cache, send_events=False
    ) as flags:
        assert flags.loaded_from == "server"
        assert flags.version == version
        assert flags.is_enabled(CHECKOUT, CORP) is False


async def test_defaults_on_every_error(
    admin: TenantAdmin,
    environment: Environment,
    keel_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flags = FlagsClient(environment.key, keel_url, auth=admin.api_key, persist=False,
                        send_events=False)  # fmt: skip
    # Not started: defaults, with one warning.
    with caplog.at_level(logging.WARNING, logger="keel_client.flags"):
        assert flags.is_enabled(CHECKOUT, CORP, default=True) is True
        assert flags.variation(WORKERS, OTHER, 3) == 3
        assert flags.variation_detail(CHECKOUT, CORP, "d").value == "d"
    assert sum("before the client" in r.getMessage() for r in caplog.records) == 1

    async with flags:

        def error_of(key: object, context: object, default: object) -> ErrorKind | None:
            detail = flags.variation_detail(key, context, default)  # type: ignore[arg-type]
            assert detail.value == default
            assert detail.variation is None
            assert detail.reason.kind == ReasonKind.ERROR
            return detail.reason.error_kind

        assert error_of("no-such-flag", CORP, "x") == ErrorKind.FLAG_NOT_FOUND
        assert error_of(CHECKOUT, {"email": "no key"}, 5) == ErrorKind.INVALID_CONTEXT
        assert error_of(CHECKOUT, "not a mapping", 5) == ErrorKind.INVALID_CONTEXT
        assert error_of(["unhashable"], CORP, 5) == ErrorKind.FLAG_NOT_FOUND
        # Wrong types: the default's type is the type asked for.
        assert flags.variation(CHECKOUT, CORP, "text") == "text"
        assert flags.variation(WORKERS, OTHER, "many") == "many"
        assert flags.variation(LIMITS, OTHER, 0) == 0
        assert flags.variation(CHECKOUT, CORP, None) is True  # None accepts any type
        assert flags.is_enabled(WORKERS, OTHER) is False
        assert flags.is_enabled(WORKERS, OTHER, default=True) is True
        wrong = flags.variation_detail(WORKERS, OTHER, "x", value_type="string")
        assert wrong.reason.error_kind == ErrorKind.WRONG_TYPE
        # track never raises either.
        flags.track("", CORP)
        flags.track("purchase", {"no": "key"})


async def test_start_fails_clearly_without_any_snapshot_or_serves_defaults_on_request(
    app: FastAPI, admin: TenantAdmin, environment: Environment, keel_url: str, tmp_path: Path
) -> None:
    with pytest.raises(FlagsNotFound, match="not found"):
        await FlagsClient("no-such-env", keel_url, auth=admin.api_key, persist=False).start()
    headers = await member(app, admin, f"flags:{environment.key}:read")
    stranger = headers["Authorization"].removeprefix("Bearer ")
    with pytest.raises(FlagsPermissionDenied, match="flags:other-env:read"):
        await FlagsClient("other-env", keel_url, auth=stranger, persist=False).start()
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FlagsUnavailable) as caught:
        await FlagsClient(
            environment.key, nowhere, auth=admin.api_key, cache_path=tmp_path / "none.json",
            retry=NO_RETRY,
        ).start()  # fmt: skip
    assert len(caught.value.reasons) == 2
    assert "no local copy" in caught.value.reasons[1]

    # require_snapshot=False: defaults now, and the snapshot once Keel answers.
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        await proxy.cut()
        flags = FlagsClient(
            environment.key, f"http://127.0.0.1:{proxy.port}", auth=admin.api_key,
            persist=False, send_events=False, retry=NO_RETRY, max_reconnect_delay=0.5,
        )  # fmt: skip
        await flags.start(require_snapshot=False)
        try:
            assert flags.loaded_from is None
            assert flags.is_enabled(CHECKOUT, CORP) is False
            await proxy.restore()
            await eventually(lambda: flags.loaded_from == "server", timeout=20)
            assert flags.is_enabled(CHECKOUT, CORP) is True
        finally:
            await flags.aclose()


async def test_the_sync_client_evaluates_and_follows(
    client: httpx.AsyncClient, admin: TenantAdmin, environment: Environment, keel_url: str
) -> None:
    """The blocking face, used from a thread without an event loop of its own."""
    flags = SyncFlagsClient(
        environment.key, keel_url, auth=admin.api_key, persist=False, send_events=False
    )
    await asyncio.to_thread(flags.start)
    try:
        assert flags.loaded_from == "server"
        assert flags.is_enabled(CHECKOUT, CORP) is True
        assert flags.variation(WORKERS, OTHER, 1) == 16
        detail = flags.variation_detail(CHECKOUT, OTHER, True)
        assert (detail.value, detail.reason.kind) == (False, ReasonKind.FALLTHROUGH)
        version = await toggle(client, environment, CHECKOUT, on=False)
        await eventually(lambda: flags.version == version)
        assert flags.is_enabled(CHECKOUT, CORP) is False
    finally:
        await asyncio.to_thread(flags.close)

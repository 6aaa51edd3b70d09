"""``SecretsClient`` and ``SyncSecretsClient`` against the in-process Keel, on SQLite and
PostgreSQL: reads, writes, check-and-set, the cache (hits, TTL, invalidation, single flight)
counted at the transport and in the audit log, refusals and missing secrets."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from keel_client.http import KeelHTTPError
from keel_client.secrets import (
    CheckAndSetConflict,
    SecretNotFound,
    SecretPermissionDenied,
    SecretsClient,
    SecretsError,
    SyncSecretsClient,
)
from tests.client.secrets.sdk_secrets_support import (
    BASE_URL,
    DATA,
    Clock,
    CountingTransport,
    LoopBridgeTransport,
    member,
)
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin


def a_value() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def assert_no_value(error: BaseException, *values: str) -> None:
    """Neither the error nor anything chained to it shows a value."""
    seen: BaseException | None = error
    while seen is not None:
        for value in values:
            assert value not in str(seen)
            assert value not in repr(seen)
        seen = seen.__cause__ or seen.__context__


async def kv_reads(app: FastAPI, admin: TenantAdmin, path: str) -> int:
    """``secrets.kv.read`` audit events of ``path`` (what Keel itself saw being read)."""
    events = await audit_events(app, admin.tenant_id, action_prefix="secrets.kv.read", limit=500)
    return sum(1 for event in events if f"secret/data/{path}" in repr(event))


async def test_get_returns_the_data_and_get_with_a_key_one_value(
    secrets: SecretsClient,
) -> None:
    password = a_value()
    version = await secrets.set(
        "apps/billing/db", {"user": "billing", "password": SecretStr(password)}
    )
    assert version == 1

    assert await secrets.get("apps/billing/db") == {"user": "billing", "password": password}
    assert await secrets.get("apps/billing/db", "password") == password
    assert await secrets.get("/apps/billing/db/", "user") == "billing"  # slashes trimmed

    assert await secrets.set("apps/billing/db", {"user": "billing", "password": "v2"}) == 2
    assert await secrets.get("apps/billing/db", "password") == "v2"


async def test_another_mount_is_named_per_call_or_per_client(
    app: FastAPI, admin: TenantAdmin, transport: CountingTransport, secrets: SecretsClient
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        mounted = await http.post(
            "/secrets/v1/sys/mounts/team-kv",
            headers={"X-Vault-Token": admin.api_key},
            json={"type": "kv", "options": {"version": "2"}},
        )
    assert mounted.status_code == 204, mounted.text
    await secrets.set("apps/x", {"where": "team"}, mount="team-kv")
    await secrets.set("apps/x", {"where": "default"})

    assert await secrets.get("apps/x", "where", mount="team-kv") == "team"
    assert await secrets.get("apps/x", "where") == "default"
    async with SecretsClient(
        BASE_URL, auth=admin.api_key, transport=transport, mount="team-kv"
    ) as team:
        assert await team.get("apps/x", "where") == "team"
    assert transport.requests[("GET", "/secrets/v1/team-kv/data/apps/x")] == 2


async def test_get_many_fetches_concurrently_and_names_a_missing_path(
    secrets: SecretsClient, transport: CountingTransport
) -> None:
    paths = [f"apps/many/{n}" for n in range(4)]
    for n, path in enumerate(paths):
        await secrets.set(path, {"n": str(n)})
    transport.most_in_flight = 0

    found = await secrets.get_many(paths)

    assert found == {path: {"n": str(n)} for n, path in enumerate(paths)}
    assert transport.most_in_flight >= 2
    assert all(transport.reads(path) == 1 for path in paths)

    with pytest.raises(SecretNotFound) as raised:
        await secrets.get_many([paths[0], "apps/many/absent"])
    assert raised.value.path == "apps/many/absent"
    assert "apps/many/absent" in str(raised.value)


async def test_a_check_and_set_mismatch_is_a_clear_conflict(secrets: SecretsClient) -> None:
    first, second = a_value(), a_value()
    assert await secrets.set("apps/cas", {"token": first}, cas=0) == 1

    with pytest.raises(CheckAndSetConflict) as raised:
        await secrets.set("apps/cas", {"token": second}, cas=0)
    error = raised.value
    assert error.status == 400
    assert error.cas == 0
    assert error.path == "apps/cas"
    assert "check-and-set" in str(error)
    assert "secret/apps/cas" in str(error)
    assert_no_value(error, first, second)

    assert await secrets.set("apps/cas", {"token": second}, cas=1) == 2
    assert await secrets.get("apps/cas", "token") == second


async def test_a_cached_read_does_not_reach_keel(
    app: FastAPI, admin: TenantAdmin, secrets: SecretsClient, transport: CountingTransport
) -> None:
    await secrets.set("apps/cached", {"password": "p", "user": "u"})

    assert await secrets.get("apps/cached") == {"password": "p", "user": "u"}
    assert await secrets.get("apps/cached", "password") == "p"
    assert await secrets.get("apps/cached", "user") == "u"
    assert await secrets.get_many(["apps/cached"]) == {
        "apps/cached": {"password": "p", "user": "u"}
    }

    assert transport.reads("apps/cached") == 1
    assert await kv_reads(app, admin, "apps/cached") == 1


async def test_concurrent_misses_of_one_secret_share_one_read(
    secrets: SecretsClient, transport: CountingTransport
) -> None:
    await secrets.set("apps/hot", {"k": "v"})

    answers = await asyncio.gather(*(secrets.get("apps/hot", "k") for _ in range(20)))

    assert answers == ["v"] * 20
    assert transport.reads("apps/hot") == 1


async def test_changing_a_returned_dict_changes_nothing_cached(secrets: SecretsClient) -> None:
    await secrets.set("apps/copy", {"k": "v", "nested": {"a": "1"}})
    first = await secrets.get("apps/copy")
    first["k"] = "changed"
    first["nested"]["a"] = "changed"
    (await secrets.get("apps/copy", "nested"))["a"] = "changed too"

    assert await secrets.get("apps/copy") == {"k": "v", "nested": {"a": "1"}}


async def test_the_cache_expires_after_its_ttl(
    app: FastAPI,
    admin: TenantAdmin,
    secrets: SecretsClient,
    transport: CountingTransport,
    clock: Clock,
) -> None:
    """Within the TTL a change made elsewhere is not seen; after it, the next read fetches."""
    await secrets.set("apps/ttl", {"v": "old"})
    assert await secrets.get("apps/ttl", "v") == "old"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        written = await http.post(
            f"{DATA}/apps/ttl",
            headers={"X-Vault-Token": admin.api_key},
            json={"data": {"v": "new"}},
        )
    assert written.status_code == 200, written.text

    clock.advance(4.9)
    assert await secrets.get("apps/ttl", "v") == "old"
    assert transport.reads("apps/ttl") == 1

    clock.advance(0.2)
    assert await secrets.get("apps/ttl", "v") == "new"
    assert transport.reads("apps/ttl") == 2
    assert await kv_reads(app, admin, "apps/ttl") == 2


async def test_set_drops_the_cached_secret(
    secrets: SecretsClient, transport: CountingTransport
) -> None:
    await secrets.set("apps/rotated", {"password": "before"})
    assert await secrets.get("apps/rotated", "password") == "before"

    await secrets.set("apps/rotated", {"password": "after"})

    assert await secrets.get("apps/rotated", "password") == "after"
    assert transport.reads("apps/rotated") == 2


async def test_a_ttl_of_zero_turns_the_cache_off(
    admin: TenantAdmin, transport: CountingTransport
) -> None:
    async with SecretsClient(
        BASE_URL, auth=admin.api_key, transport=transport, cache_ttl=0
    ) as uncached:
        await uncached.set("apps/uncached", {"k": "v"})
        for _ in range(3):
            assert await uncached.get("apps/uncached", "k") == "v"
        assert len(uncached.cache) == 0
    assert transport.reads("apps/uncached") == 3


async def test_the_cache_holds_at_most_cache_size_secrets(
    admin: TenantAdmin, transport: CountingTransport
) -> None:
    async with SecretsClient(
        BASE_URL, auth=admin.api_key, transport=transport, cache_size=2
    ) as small:
        for name in ("a", "b", "c"):
            await small.set(f"apps/lru/{name}", {"k": name})
            await small.get(f"apps/lru/{name}")
        assert len(small.cache) == 2
        await small.get("apps/lru/c")  # still cached
        await small.get("apps/lru/a")  # pushed out by c: read again
    assert transport.reads("apps/lru/c") == 1
    assert transport.reads("apps/lru/a") == 2


async def test_a_refused_read_or_write_is_a_permission_error(
    app: FastAPI, admin: TenantAdmin, secrets: SecretsClient, transport: CountingTransport
) -> None:
    hidden = a_value()
    await secrets.set("apps/web/db", {"password": hidden})
    await secrets.set("apps/billing/db", {"password": "readable"})
    key = await member(app, admin, 'path "secret/data/apps/billing/*" { capabilities = ["read"] }')

    async with SecretsClient(BASE_URL, auth=key, transport=transport) as reader:
        assert await reader.get("apps/billing/db", "password") == "readable"
        with pytest.raises(SecretPermissionDenied) as refused_read:
            await reader.get("apps/web/db", "password")
        with pytest.raises(SecretPermissionDenied) as refused_write:
            await reader.set("apps/billing/db", {"password": hidden})

    assert refused_read.value.status == 403
    assert refused_read.value.path == "apps/web/db"
    assert "permission denied to read secret secret/apps/web/db" in str(refused_read.value)
    assert "permission denied to write secret secret/apps/billing/db" in str(refused_write.value)
    assert_no_value(refused_read.value, hidden)
    assert_no_value(refused_write.value, hidden)
    assert isinstance(refused_read.value, KeelHTTPError)

    async with SecretsClient(BASE_URL, auth="keel_not-a-key", transport=transport) as stranger:
        with pytest.raises(SecretPermissionDenied):
            await stranger.get("apps/billing/db")


async def test_missing_secret_key_or_live_version_is_not_found(
    app: FastAPI, admin: TenantAdmin, secrets: SecretsClient
) -> None:
    with pytest.raises(SecretNotFound) as absent:
        await secrets.get("apps/nowhere")
    assert absent.value.status == 404
    assert absent.value.path == "apps/nowhere"
    assert str(absent.value).startswith("secret secret/apps/nowhere: not found")
    assert isinstance(absent.value, LookupError)

    value = a_value()
    await secrets.set("apps/keys", {"present": value})
    with pytest.raises(SecretNotFound) as no_key:
        await secrets.get("apps/keys", "absent")
    assert no_key.value.key == "absent"
    assert "has no key 'absent'" in str(no_key.value)
    assert_no_value(no_key.value, value)
    with pytest.raises(SecretNotFound):  # the same answer from the cache
        await secrets.get("apps/keys", "absent")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        deleted = await http.delete(f"{DATA}/apps/keys", headers={"X-Vault-Token": admin.api_key})
    assert deleted.status_code == 204
    secrets.invalidate("apps/keys")
    with pytest.raises(SecretNotFound) as gone:
        await secrets.get("apps/keys", "present")
    assert "latest version is deleted" in str(gone.value)
    assert_no_value(gone.value, value)


async def test_bad_paths_are_refused_before_any_request(
    secrets: SecretsClient, transport: CountingTransport
) -> None:
    for path in ("", "/", "apps/../auth", "apps//db", "./apps"):
        with pytest.raises(ValueError, match="secret path"):
            await secrets.get(path)
    with pytest.raises(ValueError, match="invalid mount"):
        await secrets.get("apps/db", mount="../sys")
    with pytest.raises(ValueError, match="cas"):
        await secrets.set("apps/db", {"k": "v"}, cas=-1)
    assert sum(transport.requests.values()) == 0


async def test_keel_refusing_bad_input_is_a_secrets_error_with_its_reason(
    secrets: SecretsClient,
) -> None:
    with pytest.raises(SecretsError) as raised:
        await secrets.set("apps/bad segment!", {"k": "v"})
    assert raised.value.status == 400
    assert "invalid path segment" in str(raised.value)


async def test_the_sync_client_reads_writes_and_caches_like_the_async_one(
    app: FastAPI, admin: TenantAdmin
) -> None:
    bridge = LoopBridgeTransport(app, asyncio.get_running_loop())

    def use_it() -> tuple[object, ...]:
        with SyncSecretsClient(BASE_URL, auth=admin.api_key, transport=bridge) as client:
            first = client.set("apps/sync/a", {"k": "a"})
            client.set("apps/sync/b", {"k": "b"})
            many = client.get_many(["apps/sync/a", "apps/sync/b"])
            value = client.get("apps/sync/a", "k")
            with pytest.raises(CheckAndSetConflict):
                client.set("apps/sync/a", {"k": "x"}, cas=0)
            with pytest.raises(SecretNotFound):
                client.get("apps/sync/none")
            return first, many, value

    first, many, value = await asyncio.to_thread(use_it)

    assert first == 1
    assert many == {"apps/sync/a": {"k": "a"}, "apps/sync/b": {"k": "b"}}
    assert value == "a"
    assert bridge.requests[("GET", f"{DATA}/apps/sync/a")] == 1

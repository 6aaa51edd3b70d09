"""Quotas, on SQLite and PostgreSQL: concurrent reservations never together pass a bucket's or
a tenant's quota (20 at once against a quota of 10: exactly 10 pass), a refused reservation
leaves nothing counted, releases never go below zero, a random sequence of reservations and
releases keeps every counter equal to what succeeded; and the usage and quota API."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from keel.core.audit import SYSTEM
from keel.core.db import Database
from keel.core.errors import NotFound
from keel.storage.schemas import BucketPolicy
from keel.storage.service import buckets, quotas
from keel.storage.service.quotas import QuotaExceeded
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

API = "/storage/v1"
#: A bound on any one test's waiting (a lock never released would hang the test otherwise).
TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Counters:
    bucket_bytes: int
    bucket_objects: int
    tenant_bytes: int
    tenant_objects: int


def database_of(app: FastAPI) -> Database:
    database: Database = app.state.keel.database
    return database


async def make_bucket(app: FastAPI, tenant_id: str, name: str, **policy: object) -> str:
    async with unit_of_work(app) as session:
        outcome = await buckets.put_bucket(
            session,
            tenant_id,
            name,
            BucketPolicy.model_validate(policy),
            actor=SYSTEM,
            platform_max_object_bytes=app.state.keel.settings.storage.max_object_bytes,
        )
        return outcome.bucket.id


async def set_tenant_quota(
    app: FastAPI,
    tenant_id: str,
    *,
    quota_bytes: int | None = None,
    quota_objects: int | None = None,
) -> None:
    async with unit_of_work(app) as session:
        await quotas.set_tenant_quota(
            session, tenant_id, quota_bytes=quota_bytes, quota_objects=quota_objects, actor=SYSTEM
        )


async def counters(app: FastAPI, tenant_id: str, name: str) -> Counters:
    async with unit_of_work(app) as session:
        bucket = await buckets.get_bucket(session, tenant_id, name)
        tenant = await quotas.tenant_quota(session, tenant_id)
        return Counters(
            bucket.used_bytes, bucket.used_objects, tenant.used_bytes, tenant.used_objects
        )


async def reserve_once(
    app: FastAPI, tenant_id: str, bucket_id: str, *, size: int, objects: int = 1
) -> bool:
    """One reservation in a unit of work of its own, held open a moment after the update (so
    the others queue on the row); whether it passed."""
    try:
        async with database_of(app).session() as session:
            await quotas.reserve(session, tenant_id, bucket_id, size=size, objects=objects)
            await asyncio.sleep(0.005)
    except QuotaExceeded:
        return False
    return True


async def reserve_concurrently(
    app: FastAPI, tenant_id: str, bucket_id: str, count: int, *, size: int = 1
) -> list[bool]:
    async with asyncio.timeout(TIMEOUT_SECONDS):
        return await asyncio.gather(
            *(reserve_once(app, tenant_id, bucket_id, size=size) for _ in range(count))
        )


async def test_20_concurrent_reservations_against_a_bucket_quota_of_10_objects(
    app: FastAPI, admin: TenantAdmin
) -> None:
    bucket_id = await make_bucket(app, admin.tenant_id, "ten-objects", quota_objects=10)
    outcomes = await reserve_concurrently(app, admin.tenant_id, bucket_id, 20, size=7)
    assert outcomes.count(True) == 10
    assert outcomes.count(False) == 10
    assert await counters(app, admin.tenant_id, "ten-objects") == Counters(70, 10, 70, 10)


async def test_20_concurrent_reservations_against_a_tenant_quota_of_10_objects(
    app: FastAPI, admin: TenantAdmin
) -> None:
    await set_tenant_quota(app, admin.tenant_id, quota_objects=10)
    # Two buckets without quotas of their own: the tenant's quota spans both.
    first = await make_bucket(app, admin.tenant_id, "first")
    second = await make_bucket(app, admin.tenant_id, "second")
    async with asyncio.timeout(TIMEOUT_SECONDS):
        outcomes = await asyncio.gather(
            *(
                reserve_once(app, admin.tenant_id, first if i % 2 else second, size=3)
                for i in range(20)
            )
        )
    assert outcomes.count(True) == 10
    assert outcomes.count(False) == 10
    one = await counters(app, admin.tenant_id, "first")
    two = await counters(app, admin.tenant_id, "second")
    # The refused ones left nothing behind on their bucket either.
    assert one.bucket_objects + two.bucket_objects == 10
    assert one.bucket_bytes + two.bucket_bytes == 30
    assert (one.tenant_bytes, one.tenant_objects) == (30, 10)


async def test_20_concurrent_reservations_against_a_byte_quota(
    app: FastAPI, admin: TenantAdmin
) -> None:
    bucket_id = await make_bucket(app, admin.tenant_id, "hundred-bytes", quota_bytes=100)
    outcomes = await reserve_concurrently(app, admin.tenant_id, bucket_id, 20, size=10)
    assert outcomes.count(True) == 10
    assert await counters(app, admin.tenant_id, "hundred-bytes") == Counters(100, 10, 100, 10)


async def test_the_first_reservations_of_a_tenant_make_its_row_once(
    app: FastAPI, admin: TenantAdmin
) -> None:
    # No quota row yet: 20 concurrent first reservations all insert-if-missing it.
    bucket_id = await make_bucket(app, admin.tenant_id, "fresh")
    outcomes = await reserve_concurrently(app, admin.tenant_id, bucket_id, 20, size=5)
    assert outcomes == [True] * 20
    assert await counters(app, admin.tenant_id, "fresh") == Counters(100, 20, 100, 20)


async def test_a_refused_reservation_counts_nothing_even_when_the_caller_commits(
    app: FastAPI, admin: TenantAdmin
) -> None:
    await set_tenant_quota(app, admin.tenant_id, quota_bytes=10)
    bucket_id = await make_bucket(app, admin.tenant_id, "roomy", quota_bytes=1000)
    async with unit_of_work(app) as session:
        with pytest.raises(QuotaExceeded) as refused:
            await quotas.reserve(session, admin.tenant_id, bucket_id, size=11)
        # The caller goes on (to record the refusal, say) and commits.
    assert refused.value.status == 409
    assert refused.value.type == "urn:keel:problem:storage-quota-exceeded"
    assert refused.value.extensions["scope"] == "tenant"
    assert refused.value.extensions["quota_bytes"] == 10
    assert await counters(app, admin.tenant_id, "roomy") == Counters(0, 0, 0, 0)

    async with unit_of_work(app) as session:
        with pytest.raises(QuotaExceeded) as refused:
            await quotas.reserve(session, admin.tenant_id, bucket_id, size=1001)
    assert refused.value.extensions["scope"] == "bucket"
    assert await counters(app, admin.tenant_id, "roomy") == Counters(0, 0, 0, 0)


async def test_a_quota_below_usage_only_stops_new_reservations(
    app: FastAPI, admin: TenantAdmin
) -> None:
    bucket_id = await make_bucket(app, admin.tenant_id, "shrinking")
    for _ in range(3):
        assert await reserve_once(app, admin.tenant_id, bucket_id, size=10)
    await set_tenant_quota(app, admin.tenant_id, quota_bytes=5)
    assert not await reserve_once(app, admin.tenant_id, bucket_id, size=0)  # 30 > 5 already
    async with unit_of_work(app) as session:
        await quotas.release(session, admin.tenant_id, bucket_id, size=30, objects=3)
    assert await reserve_once(app, admin.tenant_id, bucket_id, size=5)
    assert not await reserve_once(app, admin.tenant_id, bucket_id, size=1)
    assert await counters(app, admin.tenant_id, "shrinking") == Counters(5, 1, 5, 1)


async def test_releases_never_go_below_zero(app: FastAPI, admin: TenantAdmin) -> None:
    bucket_id = await make_bucket(app, admin.tenant_id, "floor")
    assert await reserve_once(app, admin.tenant_id, bucket_id, size=4)
    async with unit_of_work(app) as session:
        await quotas.release(session, admin.tenant_id, bucket_id, size=100, objects=5)
    assert await counters(app, admin.tenant_id, "floor") == Counters(0, 0, 0, 0)


async def test_a_reservation_in_a_missing_or_foreign_bucket_is_not_found(
    app: FastAPI, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    theirs = await make_bucket(app, other.tenant_id, "theirs")
    for bucket_id in (theirs, "no-such-bucket"):
        async with unit_of_work(app) as session:
            with pytest.raises(NotFound):
                await quotas.reserve(session, admin.tenant_id, bucket_id, size=1)
    assert await counters(app, other.tenant_id, "theirs") == Counters(0, 0, 0, 0)
    with pytest.raises(ValueError, match="never negative"):
        async with unit_of_work(app) as session:
            await quotas.reserve(session, admin.tenant_id, theirs, size=-1)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_random_sequence_keeps_the_counters_equal_to_what_succeeded(
    app: FastAPI, admin: TenantAdmin, seed: int
) -> None:
    """Reservations (sometimes several in one unit of work, some rolled back) and releases of
    what was reserved, in a random order, against changing quotas: after every step
    0 <= used <= quota (unless the quota was lowered below it) and used == the sum of what
    passed minus what was released."""
    rng = random.Random(seed)
    tenant_id = admin.tenant_id
    names = ["alpha", "beta"]
    ids = {
        name: await make_bucket(app, tenant_id, name, quota_objects=6, quota_bytes=60)
        for name in names
    }
    await set_tenant_quota(app, tenant_id, quota_objects=10, quota_bytes=90)
    held: dict[str, list[int]] = {name: [] for name in names}
    tenant_limits = (90, 10)

    for _ in range(60):
        name = rng.choice(names)
        bucket_id = ids[name]
        roll = rng.random()
        if roll < 0.55:
            sizes = [rng.randint(0, 25) for _ in range(rng.randint(1, 2))]
            rollback = rng.random() < 0.2
            passed: list[int] = []
            try:
                async with database_of(app).session() as session:
                    for size in sizes:
                        try:
                            await quotas.reserve(session, tenant_id, bucket_id, size=size)
                        except QuotaExceeded:
                            continue
                        passed.append(size)
                    if rollback:
                        raise RuntimeError("roll back")
            except RuntimeError:
                passed = []
            held[name].extend(passed)
        elif roll < 0.9 and held[name]:
            size = held[name].pop(rng.randrange(len(held[name])))
            async with unit_of_work(app) as session:
                await quotas.release(session, tenant_id, bucket_id, size=size)
        else:
            tenant_limits = (rng.randint(20, 120), rng.randint(3, 12))
            await set_tenant_quota(
                app, tenant_id, quota_bytes=tenant_limits[0], quota_objects=tenant_limits[1]
            )

        total_bytes = sum(sum(sizes) for sizes in held.values())
        total_objects = sum(len(sizes) for sizes in held.values())
        for each in names:
            found = await counters(app, tenant_id, each)
            assert (found.bucket_bytes, found.bucket_objects) == (sum(held[each]), len(held[each]))
            assert 0 <= found.bucket_bytes <= 60
            assert 0 <= found.bucket_objects <= 6
            assert (found.tenant_bytes, found.tenant_objects) == (total_bytes, total_objects)


async def test_usage_and_the_tenant_quota_over_the_api(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    headers = admin.headers
    empty = await client.get(f"{API}/usage", headers=headers)
    assert empty.status_code == 200
    assert empty.json() == {
        "tenant": {"quota_bytes": None, "quota_objects": None, "used_bytes": 0, "used_objects": 0},
        "buckets": [],
    }
    created = await client.put(f"{API}/buckets/counted", json={"quota_objects": 4}, headers=headers)
    assert created.status_code == 201
    bucket_id = await make_bucket(app, admin.tenant_id, "counted", quota_objects=4)
    assert await reserve_once(app, admin.tenant_id, bucket_id, size=12)

    writer = await member(app, admin, "storage:buckets:write")
    refused = await client.put(f"{API}/quota", json={"quota_bytes": 5}, headers=writer)
    assert refused.status_code == 403
    quota = await client.put(
        f"{API}/quota", json={"quota_bytes": 5, "quota_objects": None}, headers=headers
    )
    assert quota.status_code == 200, quota.text
    # Below what the tenant holds already: accepted.
    assert quota.json() == {
        "quota_bytes": 5,
        "quota_objects": None,
        "used_bytes": 12,
        "used_objects": 1,
    }
    usage = (await client.get(f"{API}/usage", headers=writer)).json()
    assert usage["tenant"] == quota.json()
    assert usage["buckets"] == [
        {
            "name": "counted",
            "quota_bytes": None,
            "quota_objects": 4,
            "used_bytes": 12,
            "used_objects": 1,
        }
    ]
    assert not await reserve_once(app, admin.tenant_id, bucket_id, size=1)

    events = await audit_events(app, admin.tenant_id, action_prefix="storage.quota.")
    assert [event.action for event in events] == ["storage.quota.set"]
    assert events[0].data["after"] == {"quota_bytes": 5, "quota_objects": None}
    # Another tenant sees its own (empty) usage.
    other = await make_tenant_admin(app)
    theirs = (await client.get(f"{API}/usage", headers=other.headers)).json()
    assert theirs["tenant"]["used_bytes"] == 0
    assert theirs["buckets"] == []

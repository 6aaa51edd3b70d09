"""The lifecycle sweep's orphan part, on SQLite and PostgreSQL, the local store and S3: blobs
no version or part names go once older than the grace; every blob a row names stays and reads
back — quarantined versions' bytes within their 7 days, versions behind a delete marker,
versions under a lock or a legal hold, the parts of an upload in progress — and so does a
part of another tenant's upload, which that tenant's own sweep removes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from keel.core.db import utcnow
from keel.core.ids import new_id
from keel.core.tenancy import bind_tenant
from keel.storage.backends import LocalBlobStore
from keel.storage.models import StorageObject, StorageUpload, StorageUploadPart
from keel.storage.service.blobio import read_version
from keel.storage.service.buckets import get_bucket
from keel.storage.service.lifecycle import sweep_tenant
from keel.storage.service.runtime import storage_runtime
from tests.storage.conftest import StorageApi
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, make_tenant_admin

#: Moto dates every object now: on S3 the grace is 0, so age protects nothing there and only
#: the rows keep blobs. On the local disk the blobs are made older than the default grace.
S3_GRACE_HOURS = 0.0


@pytest.fixture
def storage_changes(storage_backend: str) -> dict[str, Any]:
    return {"orphan_grace_hours": S3_GRACE_HOURS} if storage_backend == "s3" else {}


async def bucket_id(storage: StorageApi, name: str) -> str:
    await storage.bucket(name, scan=False)
    async with unit_of_work(storage.app) as session:
        return (await get_bucket(session, storage.admin.tenant_id, name)).id


async def change(storage: StorageApi, version_id: str, **values: Any) -> None:
    async with unit_of_work(storage.app) as session:
        bind_tenant(session, storage.admin.tenant_id)
        await session.execute(
            update(StorageObject).where(StorageObject.id == version_id).values(**values)
        )


async def uploaded(storage: StorageApi, bucket: str, key: str, data: bytes) -> str:
    answer = await storage.put(bucket, key, data)
    assert answer.status_code == 201, answer.text
    version_id: str = answer.json()["version_id"]
    return version_id


async def start_upload(storage: StorageApi, admin: TenantAdmin, bucket: str, key: str) -> str:
    answer = await storage.client.post(
        f"/storage/v1/buckets/{bucket}/uploads", json={"key": key}, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text
    upload_id: str = answer.json()["upload_id"]
    return upload_id


async def named_locators(storage: StorageApi, tenants: list[str]) -> set[str]:
    """Every locator a version or a part of ``tenants`` names (the PostgreSQL database holds
    other tests' rows too)."""
    async with unit_of_work(storage.app) as session:
        versions = await session.scalars(
            select(StorageObject.locator)
            .where(StorageObject.locator != "", StorageObject.tenant_id.in_(tenants))
            .execution_options(all_tenants=True)
        )
        parts = await session.scalars(
            select(StorageUploadPart.locator)
            .join(StorageUpload, StorageUpload.id == StorageUploadPart.upload_id)
            .where(StorageUpload.tenant_id.in_(tenants))
            .execution_options(all_tenants=True)
        )
        return set(versions) | set(parts)


async def write_blob(storage: StorageApi, locator: str, data: bytes) -> None:
    store = storage_runtime(storage.context).blobs

    async def body() -> AsyncIterator[bytes]:
        yield data

    await store.write(locator, body())


async def age_every_blob(storage: StorageApi, hours: float) -> None:
    """Date every blob of the local store ``hours`` back (S3: moto dates them now)."""
    store = storage_runtime(storage.context).blobs
    if not isinstance(store, LocalBlobStore):
        return
    then = time.time() - hours * 3600
    for path in store.root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


async def exists(storage: StorageApi, locator: str) -> bool:
    return await storage_runtime(storage.context).blobs.size(locator) is not None


@pytest.mark.parametrize("storage_backend", ["local", "s3"], indirect=True)
async def test_orphans_go_and_every_blob_a_row_names_stays(storage: StorageApi) -> None:
    tenant = storage.admin.tenant_id
    grace = storage.context.settings.storage.orphan_grace_hours
    plain = await bucket_id(storage, "plain")
    await storage.bucket("history", scan=False, versioning=True)
    kept = {"plain/a.bin": b"a" * 100, "plain/held.bin": b"h" * 10, "plain/locked.bin": b"l" * 7}
    held = await uploaded(storage, "plain", "held.bin", kept["plain/held.bin"])
    locked = await uploaded(storage, "plain", "locked.bin", kept["plain/locked.bin"])
    await uploaded(storage, "plain", "a.bin", kept["plain/a.bin"])
    await change(storage, held, legal_hold=True)
    await change(storage, locked, lock_mode="governance", retain_until=utcnow() + timedelta(days=1))
    infected = await uploaded(storage, "plain", "bad.bin", b"x" * 33)
    await change(storage, infected, state="infected", reason="Eicar-Test-Signature")
    older = await uploaded(storage, "history", "doc", b"first")
    newer = await uploaded(storage, "history", "doc", b"second")
    hidden = await storage.call("DELETE", "/buckets/history/objects/doc")
    assert hidden.status_code == 204, hidden.text
    live_upload = await start_upload(storage, storage.admin, "plain", "big.bin")
    part = await storage.call(
        "PUT", f"/buckets/plain/uploads/{live_upload}/parts/1", content=b"part one"
    )
    assert part.status_code == 200, part.text

    other = await make_tenant_admin(storage.app)
    other_bucket = await storage.client.put(
        "/storage/v1/buckets/theirs", json={"scan": False}, headers=other.headers
    )
    assert other_bucket.status_code == 201, other_bucket.text
    other_upload = await start_upload(storage, other, "theirs", "their.bin")

    gone_upload_part = f"uploads/{new_id()}/1.{new_id()}"  # a part of an upload gone
    orphans = {
        f"{tenant}/{plain}/{new_id()}": b"o" * 1000,  # a version whose row never came
        f"uploads/{live_upload}/2.{new_id()}": b"p" * 20,  # a part whose row never came
        gone_upload_part: b"q" * 5,
    }
    theirs = f"uploads/{other_upload}/1.{new_id()}"
    for locator, data in {**orphans, theirs: b"t"}.items():
        await write_blob(storage, locator, data)
    await age_every_blob(storage, grace + 1)
    fresh = f"{tenant}/{plain}/{new_id()}"  # written within the grace: maybe in flight
    await write_blob(storage, fresh, b"f")
    named = await named_locators(storage, [tenant, other.tenant_id])
    assert len(named) == 7  # six versions' blobs (not the delete marker) and one part's
    if grace == 0:
        orphans[fresh] = b"f"

    report = await sweep_tenant(storage.context, tenant)

    assert (report.orphans_deleted, report.orphan_bytes_deleted) == (
        len(orphans),
        sum(len(data) for data in orphans.values()),
    )
    assert [locator for locator in orphans if await exists(storage, locator)] == []
    assert [locator for locator in named if not await exists(storage, locator)] == []
    assert await exists(storage, theirs)
    assert await exists(storage, fresh) == (fresh not in orphans)
    for name, data in kept.items():
        bucket, key = name.split("/")
        answer = await storage.get(bucket, key)
        assert (answer.status_code, answer.content) == (200, data)
    for version_id, data in ((older, b"first"), (newer, b"second")):
        answer = await storage.get("history", "doc", params={"version_id": version_id})
        assert (answer.status_code, answer.content) == (200, data)
    async with unit_of_work(storage.app) as session:
        bind_tenant(session, tenant)
        quarantined = await session.get(StorageObject, infected)
        assert quarantined is not None
    read = b"".join([chunk async for chunk in read_version(storage.context, quarantined)])
    assert read == b"x" * 33
    done = await storage.call(
        "POST",
        f"/buckets/plain/uploads/{live_upload}/complete",
        json={"parts": [{"number": 1, "etag": part.json()["etag"]}]},
    )
    assert done.status_code == 201, done.text
    assert (await storage.get("plain", "big.bin")).content == b"part one"

    # Audited in the tenant's log: its own blobs. The part of an upload gone names no tenant:
    # it is not put in the log of the tenant whose sweep happened to find it.
    events = await audit_events(storage.app, tenant, action_prefix="storage.blob.orphan_delete")
    assert {event.target_id: event.data["size"] for event in events} == {
        locator: len(data) for locator, data in orphans.items() if locator != gone_upload_part
    }
    assert all(event.actor_type == "system" for event in events)
    assert (await sweep_tenant(storage.context, tenant)).orphans_deleted == 0

    # The part of the other tenant's upload is that tenant's sweep's to delete.
    assert (await sweep_tenant(storage.context, other.tenant_id)).orphans_deleted == 1
    assert not await exists(storage, theirs)
    their_events = await audit_events(
        storage.app, other.tenant_id, action_prefix="storage.blob.orphan_delete"
    )
    assert [event.target_id for event in their_events] == [theirs]


async def test_a_blob_younger_than_the_grace_is_kept(storage: StorageApi) -> None:
    tenant = storage.admin.tenant_id
    grace = storage.context.settings.storage.orphan_grace_hours
    assert grace == 24  # the default
    bucket = await bucket_id(storage, "young")
    locator = f"{tenant}/{bucket}/{new_id()}"
    await write_blob(storage, locator, b"in flight")
    assert (await sweep_tenant(storage.context, tenant)).orphans_deleted == 0
    assert await exists(storage, locator)
    # The sweep's clock past the grace: the blob is an orphan now.
    later = utcnow() + timedelta(hours=grace, minutes=1)
    assert (await sweep_tenant(storage.context, tenant, now=later)).orphans_deleted == 1
    assert not await exists(storage, locator)

"""The lifecycle sweep, on SQLite and PostgreSQL: versions past a bucket's maximum age expire
unless a legal hold or a lock keeps them; noncurrent versions beyond the bucket's count are
pruned; an infected version's bytes go after the grace while its row stays; a version whose
scan job was lost gets a new one; every blob removed gives its bytes back to the quota; and
the scheduler enqueues one sweep per tenant and interval, however often it runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.jobs.models import LIVE_STATES, Job
from keel.settings import Settings
from keel.storage.models import StorageObject
from keel.storage.service.lifecycle import QUARANTINE_GRACE, sweep, sweep_tenant
from keel.storage.service.runtime import LIFECYCLE, SCAN
from keel.storage.tasks import enqueue_lifecycle_sweeps
from tests.storage.conftest import storage_settings
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A scanner nobody answers at: a scanning bucket's versions stay pending (their scan
    jobs retry) while the app's own runner works, so a sweep meets pending versions."""
    return storage_settings(settings, clamd_address=f"tcp://127.0.0.1:{free_port()}")


API = "/storage/v1"


async def make_bucket(
    client: httpx.AsyncClient, admin: TenantAdmin, name: str, **policy: Any
) -> None:
    answer = await client.put(
        f"{API}/buckets/{name}", json={"scan": False, **policy}, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text


async def upload(
    client: httpx.AsyncClient, admin: TenantAdmin, bucket: str, key: str, data: bytes
) -> str:
    answer = await client.put(
        f"{API}/buckets/{bucket}/objects/{key}", content=data, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text
    version_id: str = answer.json()["version_id"]
    return version_id


async def change(app: FastAPI, tenant_id: str, version_id: str, **values: Any) -> None:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        await session.execute(
            update(StorageObject).where(StorageObject.id == version_id).values(**values)
        )


async def remaining(app: FastAPI, tenant_id: str) -> dict[str, StorageObject]:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        return {row.id: row for row in await session.scalars(select(StorageObject))}


async def usage(client: httpx.AsyncClient, admin: TenantAdmin, bucket: str) -> tuple[int, int]:
    body = (await client.get(f"{API}/buckets/{bucket}", headers=admin.headers)).json()
    return body["used_bytes"], body["used_objects"]


def blob_exists(app: FastAPI, locator: str) -> bool:
    settings = app.state.keel.settings
    root: Path = settings.storage.local_root(settings.data_dir)
    return (root / locator).is_file()


async def test_old_versions_expire_unless_held_or_locked_and_their_quota_is_released(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    tenant = admin.tenant_id
    await make_bucket(client, admin, "aging", retention={"max_days": 1})
    old = await upload(client, admin, "aging", "old.bin", b"o" * 100)
    held = await upload(client, admin, "aging", "held.bin", b"h" * 10)
    locked = await upload(client, admin, "aging", "locked.bin", b"l" * 10)
    fresh = await upload(client, admin, "aging", "fresh.bin", b"f" * 10)
    two_days_ago = utcnow() - timedelta(days=2)
    for version_id in (old, held, locked):
        await change(app, tenant, version_id, created_at=two_days_ago)
    await change(app, tenant, held, legal_hold=True)
    await change(
        app, tenant, locked, lock_mode="governance", retain_until=utcnow() + timedelta(days=1)
    )
    old_locator = (await remaining(app, tenant))[old].locator
    assert blob_exists(app, old_locator)
    assert await usage(client, admin, "aging") == (130, 4)

    report = await sweep_tenant(app.state.keel, tenant)
    assert report.expired == 1
    assert set(await remaining(app, tenant)) == {held, locked, fresh}
    assert not blob_exists(app, old_locator)
    assert await usage(client, admin, "aging") == (30, 3)
    gone = await client.get(f"{API}/buckets/aging/objects/old.bin", headers=admin.headers)
    assert gone.status_code == 404
    events = await audit_events(app, tenant, action_prefix="storage.object.expire")
    assert [(event.target_id, event.data["rule"]) for event in events] == [(old, "expiry")]
    assert events[0].actor_type == "system"

    # A lock that ran out and a hold lifted no longer keep them.
    await change(app, tenant, held, legal_hold=False)
    await change(app, tenant, locked, retain_until=utcnow() - timedelta(seconds=1))
    assert (await sweep_tenant(app.state.keel, tenant)).expired == 2
    assert set(await remaining(app, tenant)) == {fresh}
    assert await usage(client, admin, "aging") == (10, 1)


async def test_noncurrent_versions_beyond_the_count_are_pruned(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    tenant = admin.tenant_id
    await make_bucket(client, admin, "history", versioning=True, noncurrent_versions_keep=1)
    ids = [await upload(client, admin, "history", "doc", bytes([n]) * 10) for n in range(5)]
    other = await upload(client, admin, "history", "other", b"x" * 7)
    await change(app, tenant, ids[1], legal_hold=True)
    assert await usage(client, admin, "history") == (57, 6)

    report = await sweep_tenant(app.state.keel, tenant)
    # Current (4) and one noncurrent (3) kept, the held one (1) too; 0 and 2 pruned.
    assert report.pruned == 2
    assert set(await remaining(app, tenant)) == {ids[4], ids[3], ids[1], other}
    assert await usage(client, admin, "history") == (37, 4)
    current = await client.get(f"{API}/buckets/history/objects/doc", headers=admin.headers)
    assert current.content == bytes([4]) * 10
    assert (await sweep_tenant(app.state.keel, tenant)).pruned == 0


async def test_an_infected_version_s_bytes_go_after_the_grace_and_its_row_stays(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    tenant = admin.tenant_id
    await make_bucket(client, admin, "quarantine")
    recent = await upload(client, admin, "quarantine", "recent.bin", b"r" * 10)
    stale = await upload(client, admin, "quarantine", "stale.bin", b"s" * 20)
    for version_id in (recent, stale):
        await change(app, tenant, version_id, state="infected", reason="Eicar-Test-Signature")
    await change(app, tenant, stale, created_at=utcnow() - QUARANTINE_GRACE - timedelta(hours=1))
    locator = (await remaining(app, tenant))[stale].locator

    report = await sweep_tenant(app.state.keel, tenant)
    assert report.quarantine_purged == 1
    rows = await remaining(app, tenant)
    assert set(rows) == {recent, stale}
    assert (rows[stale].state, rows[stale].reason, rows[stale].locator) == (
        "infected",
        "Eicar-Test-Signature",
        "",
    )
    assert not blob_exists(app, locator)
    assert blob_exists(app, rows[recent].locator)
    assert await usage(client, admin, "quarantine") == (10, 1)
    info = await client.get(f"{API}/buckets/quarantine/info/stale.bin", headers=admin.headers)
    assert info.status_code == 200, info.text
    assert (await sweep_tenant(app.state.keel, tenant)).quarantine_purged == 0


async def test_a_version_whose_scan_job_was_lost_is_scanned_again(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    tenant = admin.tenant_id
    await make_bucket(client, admin, "scanned", scan=True)
    version_id = await upload(client, admin, "scanned", "p.bin", b"p" * 10)
    await change(app, tenant, version_id, created_at=utcnow() - timedelta(hours=2))

    async def scan_jobs(*states: str) -> int:
        async with unit_of_work(app) as session:
            bind_tenant(session, tenant)
            count = await session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.task == SCAN.task_name, Job.state.in_(states))
            )
        return int(count or 0)

    assert await scan_jobs(*LIVE_STATES) == 1
    assert (await sweep_tenant(app.state.keel, tenant)).scans_requeued == 0  # its job lives
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant)
        await session.execute(
            update(Job).where(Job.task == SCAN.task_name).values(state="cancelled")
        )
    assert (await sweep_tenant(app.state.keel, tenant)).scans_requeued == 1
    assert await scan_jobs(*LIVE_STATES) == 1
    assert (await sweep_tenant(app.state.keel, tenant)).scans_requeued == 0


async def test_the_scheduler_enqueues_one_sweep_per_tenant_and_interval(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    tenant = admin.tenant_id
    context = app.state.keel

    async def sweeps() -> list[Job]:
        async with unit_of_work(app) as session:
            bind_tenant(session, tenant)
            return list(await session.scalars(select(Job).where(Job.task == LIFECYCLE.task_name)))

    await enqueue_lifecycle_sweeps(context)
    assert await sweeps() == []  # no buckets, no sweep
    await make_bucket(client, admin, "any")
    await enqueue_lifecycle_sweeps(context)
    await enqueue_lifecycle_sweeps(context)  # another replica, or the next round too soon
    jobs = await sweeps()
    assert len(jobs) == 1
    assert jobs[0].queue == LIFECYCLE.queue
    # Done or not, a sweep of the interval holds the key; the handler is the sweep.
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant)
        await session.execute(update(Job).where(Job.id == jobs[0].id).values(state="completed"))
    await enqueue_lifecycle_sweeps(context)
    assert len(await sweeps()) == 1
    assert LIFECYCLE.resolve_handler() is sweep

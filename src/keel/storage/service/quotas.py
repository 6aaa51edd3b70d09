"""Quotas: what a bucket and a tenant may hold, and the counters of what they hold.

The counters move only by conditional ``UPDATE``s, one statement a row::

    UPDATE storage_buckets SET used_bytes = used_bytes + :n, used_objects = used_objects + :k
    WHERE id = :id AND (quota_bytes IS NULL OR used_bytes + :n <= quota_bytes)
                   AND (quota_objects IS NULL OR used_objects + :k <= quota_objects)

and the same on the tenant's ``storage_tenant_quotas`` row. No row updated means the quota
would be passed. The database evaluates the condition against the row it writes (PostgreSQL
re-reads the newest committed row after waiting for a concurrent writer's lock; SQLite runs
one writer at a time), so concurrent reservations can never together pass a quota.

Rows are always taken in the same order, the bucket's then the tenant's, so two units of work
reserving (or deleting a bucket) never wait for each other in a circle.

A refused reservation is ``QuotaExceeded``: **409** ``urn:keel:problem:storage-quota-exceeded``
(the request is fine, the state of the bucket or tenant refuses it: as a full disk, it passes
once something is deleted or the quota is raised; 403 would tell a client its credentials are
the problem). The problem names the ``scope`` (``bucket`` or ``tenant``), the ``quota_bytes``
and ``quota_objects`` in force and the usage.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.errors import Conflict, NotFound
from keel.core.tenancy import bind_tenant
from keel.storage.models import StorageBucket, StorageTenantQuota


class QuotaExceeded(Conflict):
    """A reservation the bucket's or the tenant's quota refuses (nothing was reserved)."""

    slug = "storage-quota-exceeded"
    title = "Storage quota exceeded"


def rowcount(result: Any) -> int:
    """Rows an ``UPDATE``/``DELETE`` touched."""
    return int(cast(CursorResult[Any], result).rowcount)


def _check_amounts(size: int, objects: int) -> None:
    if size < 0 or objects < 0:
        raise ValueError("a reservation's size and objects are never negative")


async def ensure_tenant_row(session: AsyncSession, tenant_id: str) -> None:
    """Make the tenant's quota row unless it exists: ``INSERT ... ON CONFLICT DO NOTHING``, so
    concurrent first uploads of a tenant never fail on the primary key (both databases)."""
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(StorageTenantQuota)
        .values(tenant_id=tenant_id, used_bytes=0, used_objects=0)
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    await session.execute(statement)


async def reserve(
    session: AsyncSession, tenant_id: str, bucket_id: str, *, size: int, objects: int = 1
) -> None:
    """Count ``size`` bytes and ``objects`` versions against the bucket and the tenant, in the
    caller's unit of work (committed with the version's row): ``QuotaExceeded`` (and nothing
    counted) when either quota would be passed, ``NotFound`` when the bucket is gone."""
    _check_amounts(size, objects)
    bind_tenant(session, tenant_id)
    bucket_result = await session.execute(
        update(StorageBucket)
        .where(
            StorageBucket.tenant_id == tenant_id,
            StorageBucket.id == bucket_id,
            StorageBucket.quota_bytes.is_(None)
            | (StorageBucket.used_bytes + size <= StorageBucket.quota_bytes),
            StorageBucket.quota_objects.is_(None)
            | (StorageBucket.used_objects + objects <= StorageBucket.quota_objects),
        )
        .values(
            used_bytes=StorageBucket.used_bytes + size,
            used_objects=StorageBucket.used_objects + objects,
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(bucket_result) != 1:
        bucket = await session.scalar(
            select(StorageBucket)
            .where(StorageBucket.tenant_id == tenant_id, StorageBucket.id == bucket_id)
            .execution_options(populate_existing=True)
        )
        if bucket is None:
            raise NotFound("The bucket does not exist (any more).")
        raise _exceeded("bucket", bucket.quota_bytes, bucket.quota_objects, bucket)
    await ensure_tenant_row(session, tenant_id)
    tenant_result = await session.execute(
        update(StorageTenantQuota)
        .where(
            StorageTenantQuota.tenant_id == tenant_id,
            StorageTenantQuota.quota_bytes.is_(None)
            | (StorageTenantQuota.used_bytes + size <= StorageTenantQuota.quota_bytes),
            StorageTenantQuota.quota_objects.is_(None)
            | (StorageTenantQuota.used_objects + objects <= StorageTenantQuota.quota_objects),
        )
        .values(
            used_bytes=StorageTenantQuota.used_bytes + size,
            used_objects=StorageTenantQuota.used_objects + objects,
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(tenant_result) != 1:
        # Undo the bucket's share: a caller that goes on (to record the refusal) and commits
        # must not keep it. This unit of work holds the bucket's row since the update above.
        await _release_bucket(session, tenant_id, bucket_id, size, objects)
        row = await session.scalar(
            select(StorageTenantQuota)
            .where(StorageTenantQuota.tenant_id == tenant_id)
            .execution_options(populate_existing=True)
        )
        assert row is not None  # made above, never deleted
        raise _exceeded("tenant", row.quota_bytes, row.quota_objects, row)


def _exceeded(
    scope: str,
    quota_bytes: int | None,
    quota_objects: int | None,
    usage: StorageBucket | StorageTenantQuota,
) -> QuotaExceeded:
    return QuotaExceeded(
        f"The {scope}'s storage quota would be exceeded.",
        scope=scope,
        quota_bytes=quota_bytes,
        quota_objects=quota_objects,
        used_bytes=usage.used_bytes,
        used_objects=usage.used_objects,
    )


def _minus(column: Any, amount: int) -> Any:
    """``column - amount``, never below zero (a counter that drifted stays a count)."""
    return case((column > amount, column - amount), else_=0)


async def _release_bucket(
    session: AsyncSession, tenant_id: str, bucket_id: str, size: int, objects: int
) -> None:
    await session.execute(
        update(StorageBucket)
        .where(StorageBucket.tenant_id == tenant_id, StorageBucket.id == bucket_id)
        .values(
            used_bytes=_minus(StorageBucket.used_bytes, size),
            used_objects=_minus(StorageBucket.used_objects, objects),
        )
        .execution_options(synchronize_session=False)
    )


async def release_tenant(
    session: AsyncSession, tenant_id: str, *, size: int, objects: int = 1
) -> None:
    """Uncount ``size`` bytes and ``objects`` versions from the tenant's usage only."""
    _check_amounts(size, objects)
    if not size and not objects:
        return
    await session.execute(
        update(StorageTenantQuota)
        .where(StorageTenantQuota.tenant_id == tenant_id)
        .values(
            used_bytes=_minus(StorageTenantQuota.used_bytes, size),
            used_objects=_minus(StorageTenantQuota.used_objects, objects),
        )
        .execution_options(synchronize_session=False)
    )


async def release(
    session: AsyncSession, tenant_id: str, bucket_id: str, *, size: int, objects: int = 1
) -> None:
    """Uncount what :func:`reserve` counted (a version's blob deleted, an upload refused after
    its reservation): the bucket's and the tenant's counters, never below zero. A bucket
    already gone only leaves the tenant's counters to move."""
    _check_amounts(size, objects)
    bind_tenant(session, tenant_id)
    await _release_bucket(session, tenant_id, bucket_id, size, objects)
    await release_tenant(session, tenant_id, size=size, objects=objects)


async def tenant_quota(session: AsyncSession, tenant_id: str) -> StorageTenantQuota:
    """The tenant's quota row (all zeros and no limits when it has none yet; not added)."""
    row = await session.scalar(
        select(StorageTenantQuota)
        .where(StorageTenantQuota.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    )
    if row is None:
        return StorageTenantQuota(
            tenant_id=tenant_id,
            quota_bytes=None,
            quota_objects=None,
            used_bytes=0,
            used_objects=0,
        )
    return row


async def set_tenant_quota(
    session: AsyncSession,
    tenant_id: str,
    *,
    quota_bytes: int | None,
    quota_objects: int | None,
    actor: Actor,
) -> StorageTenantQuota:
    """Set the tenant's limits (``None``: none), audited. Below current usage is allowed: it
    refuses new uploads until enough is deleted."""
    before = await tenant_quota(session, tenant_id)
    previous = {"quota_bytes": before.quota_bytes, "quota_objects": before.quota_objects}
    await ensure_tenant_row(session, tenant_id)
    await session.execute(
        update(StorageTenantQuota)
        .where(StorageTenantQuota.tenant_id == tenant_id)
        .values(quota_bytes=quota_bytes, quota_objects=quota_objects)
        .execution_options(synchronize_session=False)
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.quota.set",
        actor=actor,
        target_type="storage_tenant_quota",
        target_id=tenant_id,
        data={
            "before": previous,
            "after": {"quota_bytes": quota_bytes, "quota_objects": quota_objects},
        },
    )
    return await tenant_quota(session, tenant_id)

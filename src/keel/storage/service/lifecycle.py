"""The lifecycle sweep of one tenant (the ``storage.lifecycle`` task, enqueued per tenant by
``keel.storage.tasks``'s scheduler): what the buckets' policies say must go, goes.

Per bucket:

- **expiry**: versions older than ``retention.max_days`` are deleted (delete markers too);
- **pruning**: beyond the newest version of a key, only ``noncurrent_versions_keep`` older
  readable versions (clean ones and delete markers) are kept;
- **quarantine**: an infected or rejected version's bytes are deleted once
  :data:`QUARANTINE_GRACE` has passed since it was stored; its row stays, so the owner still
  sees the version and why it was refused;
- **scans**: a version still pending after the scan's timeout with no live scan job (the
  job was lost) gets a new one — a crash never leaves a version unreadable for good.

Nothing a lock (``retain_until`` ahead), a legal hold or the minimum retention keeps is ever
deleted. Every deleted blob's bytes and object go back to the bucket's and tenant's quota,
in the transaction that deletes the row; the blobs go after it commits.

And per tenant: multipart uploads past their ``expires_at`` are aborted, parts and all; and
blobs no version or part names, older than ``KEEL_STORAGE__ORPHAN_GRACE_HOURS``, are
deleted as orphans (``keel.storage.service.orphans``).

Work goes in batches of :data:`BATCH` rows, each its own transaction, so a sweep of a large
bucket holds no long transaction and little memory, and a sweep cut short (a crash, its
timeout) loses nothing: the next one carries on where the state says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from keel.core.audit import SYSTEM, record_event
from keel.core.context import AppContext, TaskRun
from keel.core.db import utcnow
from keel.core.logging import get_logger
from keel.core.tenancy import bind_tenant
from keel.jobs.service import enqueue_task, live_task_args
from keel.storage.models import (
    ObjectState,
    StorageBucket,
    StorageObject,
    StorageUpload,
)
from keel.storage.schemas import BucketPolicy
from keel.storage.service import blobio, multipart, objects, orphans, quotas
from keel.storage.service.buckets import bucket_policy
from keel.storage.service.runtime import SCAN

log = get_logger(__name__)

#: Rows one transaction of the sweep handles.
BATCH = 500
#: How long an infected or rejected version's bytes are kept (for an operator to look at)
#: before the sweep deletes them.
QUARANTINE_GRACE = timedelta(days=7)


@dataclass
class SweepReport:
    """What one sweep did (the job's result)."""

    expired: int = 0
    pruned: int = 0
    quarantine_purged: int = 0
    uploads_aborted: int = 0
    scans_requeued: int = 0
    orphans_deleted: int = 0
    orphan_bytes_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def keeps(version: StorageObject, policy: BucketPolicy, now: datetime) -> bool:
    """Whether a lock, a legal hold or the minimum retention keeps ``version`` from the sweep."""
    return objects.is_protected(version, policy, now)


async def sweep(context: AppContext, run: TaskRun, args: Any) -> dict[str, int]:
    """The ``storage.lifecycle`` handler: sweep the job's tenant (see the module's text)."""
    return (await sweep_tenant(context, run.tenant_id)).as_dict()


async def sweep_tenant(
    context: AppContext, tenant_id: str, *, now: datetime | None = None
) -> SweepReport:
    """Sweep every bucket and the expired uploads of ``tenant_id`` as of ``now``."""
    now = now or utcnow()
    report = SweepReport()
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        buckets = list(await session.scalars(select(StorageBucket).order_by(StorageBucket.id)))
    for bucket in buckets:
        policy = bucket_policy(bucket)
        if policy.retention.max_days is not None:
            cutoff = now - timedelta(days=policy.retention.max_days)
            report.expired += await _delete_in_batches(
                context, tenant_id, bucket, now, "expiry", _expired(bucket, cutoff)
            )
        if policy.noncurrent_versions_keep is not None:
            report.pruned += await _delete_in_batches(
                context,
                tenant_id,
                bucket,
                now,
                "noncurrent",
                _noncurrent(bucket, policy.noncurrent_versions_keep),
            )
        report.quarantine_purged += await _purge_quarantined(
            context, tenant_id, bucket, now - QUARANTINE_GRACE
        )
    report.uploads_aborted = await _abort_expired_uploads(context, tenant_id, now)
    report.scans_requeued = await _requeue_lost_scans(context, tenant_id, now)
    deleted = await orphans.delete_orphans(context, tenant_id, now)
    report.orphans_deleted, report.orphan_bytes_deleted = deleted.blobs, deleted.bytes
    if any(report.as_dict().values()):
        log.info("storage.lifecycle.swept", tenant_id=tenant_id, **report.as_dict())
    return report


Finder = Any  # a callable (session, after) -> statement selecting StorageObject rows


def _expired(bucket: StorageBucket, cutoff: datetime) -> Finder:
    def statement(after: str) -> Any:
        return (
            select(StorageObject)
            .where(
                StorageObject.bucket_id == bucket.id,
                StorageObject.created_at < cutoff,
                StorageObject.id > after,
            )
            .order_by(StorageObject.id)
            .limit(BATCH)
        )

    return statement


def _noncurrent(bucket: StorageBucket, keep: int) -> Finder:
    """Readable versions (clean, or delete markers) ranked newest first per key: the first
    is current, the next ``keep`` are kept, the rest go."""

    def statement(after: str) -> Any:
        ranked = (
            select(
                StorageObject,
                func.row_number()
                .over(partition_by=StorageObject.key, order_by=objects.newest_first())  # type: ignore[arg-type]
                .label("rank"),
            )
            .where(
                StorageObject.bucket_id == bucket.id,
                (StorageObject.state == ObjectState.clean) | StorageObject.is_delete_marker,
            )
            .subquery()
        )
        version = aliased(StorageObject, ranked)
        return (
            select(version)
            .where(ranked.c.rank > keep + 1, ranked.c.id > after)
            .order_by(ranked.c.id)
            .limit(BATCH)
        )

    return statement


async def _delete_in_batches(
    context: AppContext,
    tenant_id: str,
    bucket: StorageBucket,
    now: datetime,
    rule: str,
    finder: Finder,
) -> int:
    """Delete what ``finder`` selects, batch by batch, skipping what is kept; the count."""
    deleted = 0
    after = ""
    while True:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            found = list(await session.scalars(finder(after)))
            if not found:
                return deleted
            after = found[-1].id
            policy = bucket_policy(await _current_bucket(session, bucket))
            targets = [version for version in found if not keeps(version, policy, now)]
            locators = await objects.delete_rows(session, tenant_id, bucket.id, targets)
            _record_expiry(session, tenant_id, bucket, targets, rule)
        await blobio.delete_blobs(context, locators)
        deleted += len(targets)
        if len(found) < BATCH:
            return deleted


async def _current_bucket(session: AsyncSession, bucket: StorageBucket) -> StorageBucket:
    # The policy as it is now: a legal hold or lock rule set since the sweep began applies.
    current = await session.get(StorageBucket, bucket.id, populate_existing=True)
    return current or bucket


def _record_expiry(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    versions: list[StorageObject],
    rule: str,
) -> None:
    for version in versions:
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.object.expire",
            actor=SYSTEM,
            target_type="storage_object",
            target_id=version.id,
            data={
                "bucket": bucket.name,
                "key": version.key,
                "version_id": version.id,
                "size": version.size,
                "state": version.state,
                "delete_marker": version.is_delete_marker,
                "rule": rule,
            },
        )


async def _purge_quarantined(
    context: AppContext, tenant_id: str, bucket: StorageBucket, cutoff: datetime
) -> int:
    """Delete the bytes of infected or rejected versions stored before ``cutoff``; the rows
    stay (state and reason for the owner) with no locator, their usage released."""
    purged = 0
    after = ""
    while True:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            found = list(
                await session.scalars(
                    select(StorageObject)
                    .where(
                        StorageObject.bucket_id == bucket.id,
                        StorageObject.state.in_([ObjectState.infected, ObjectState.rejected]),
                        StorageObject.locator != "",
                        StorageObject.created_at < cutoff,
                        StorageObject.id > after,
                    )
                    .order_by(StorageObject.id)
                    .limit(BATCH)
                    .with_for_update()
                )
            )
            if not found:
                return purged
            after = found[-1].id
            policy = bucket_policy(await _current_bucket(session, bucket))
            now = utcnow()
            targets = [version for version in found if not keeps(version, policy, now)]
            locators = [version.locator for version in targets]
            for version in targets:
                version.locator = ""
                version.data_key_sealed = None
            if targets:
                await quotas.release(
                    session,
                    tenant_id,
                    bucket.id,
                    size=sum(version.size for version in targets),
                    objects=len(targets),
                )
            _record_expiry(session, tenant_id, bucket, targets, "quarantine")
        await blobio.delete_blobs(context, locators)
        purged += len(targets)
        if len(found) < BATCH:
            return purged


async def _abort_expired_uploads(context: AppContext, tenant_id: str, now: datetime) -> int:
    aborted = 0
    while True:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            expired = list(
                await session.execute(
                    select(StorageUpload.id, StorageUpload.key, StorageBucket.name)
                    .join(StorageBucket, StorageBucket.id == StorageUpload.bucket_id)
                    .where(StorageUpload.expires_at <= now)
                    .order_by(StorageUpload.id)
                    .limit(BATCH)
                )
            )
        if not expired:
            return aborted
        for upload_id, key, bucket_name in expired:
            if not await multipart.discard_upload(context, tenant_id, upload_id):
                continue  # completed or aborted meanwhile
            aborted += 1
            async with context.database.session() as session:
                record_event(
                    session,
                    tenant_id=tenant_id,
                    action="storage.upload.abort",
                    actor=SYSTEM,
                    target_type="storage_upload",
                    target_id=upload_id,
                    data={"bucket": bucket_name, "key": key, "expired": True},
                )
        if len(expired) < BATCH:
            return aborted


def lost_scan_after(context: AppContext) -> timedelta:
    """How long a version may stay pending before the sweep asks whether its scan job lives:
    past the job's own timeout, a live job would have been rescued by its lease."""
    return timedelta(
        seconds=max(SCAN.timeout_seconds, context.settings.storage.scan_timeout_seconds)
    )


async def _requeue_lost_scans(context: AppContext, tenant_id: str, now: datetime) -> int:
    """A new scan job for every version pending past :func:`lost_scan_after` whose job is
    gone (none of the tenant's live ``storage.scan`` jobs names it)."""
    cutoff = now - lost_scan_after(context)
    requeued = 0
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        pending = list(
            await session.scalars(
                select(StorageObject.id)
                .where(
                    StorageObject.state == ObjectState.pending,
                    StorageObject.is_delete_marker.is_(False),
                    StorageObject.created_at < cutoff,
                )
                .order_by(StorageObject.id)
                .limit(BATCH)
            )
        )
        if not pending:
            return 0
        live_args = await live_task_args(session, SCAN)
        scanning = {args.get("version_id") for args in live_args if isinstance(args, dict)}
        for version_id in pending:
            if version_id in scanning:
                continue
            await enqueue_task(session, tenant_id, SCAN, {"version_id": version_id})
            requeued += 1
    if requeued:
        log.warning("storage.lifecycle.scans_requeued", tenant_id=tenant_id, versions=requeued)
    return requeued

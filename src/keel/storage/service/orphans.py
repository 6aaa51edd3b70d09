"""The orphan part of the lifecycle sweep: blobs that no row names are deleted once they are
older than ``KEEL_STORAGE__ORPHAN_GRACE_HOURS``.

A version's bytes are written before its row, and a part's before its part row, so a process
that dies between the two (or a clean-up that failed after a rollback) leaves a blob nobody
will ever read, nor count against a quota. The sweep of a tenant lists its blobs
(``<tenant>/``) and the parts of multipart uploads (``uploads/``, named by upload only), a
page at a time, and deletes each blob that is:

- older than the grace: a write in flight (its row not yet committed) is never taken for an
  orphan;
- named by no version (``StorageObject.locator``) and no part (``StorageUploadPart.locator``)
  of any tenant: a quarantined version's bytes, a locked or held version's and a live
  upload's parts are all named by their rows, so they stay;
- under ``uploads/``, not a part of another tenant's upload in progress: that tenant's sweep
  deletes it, in its own audit log. A part whose upload is gone (an abort whose deletion of
  the parts failed) belongs to nobody any more and goes with the first sweep to find it.

Each deletion of the tenant's own blobs (under ``<tenant>/``, or a part of one of its
uploads) is a ``storage.blob.orphan_delete`` event of the tenant's audit log. A part whose
upload is gone names no tenant any more: its deletion is logged
(``storage.orphan_part_deleted``), not put in the log of whichever tenant's sweep found it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from keel.core.audit import SYSTEM, record_event
from keel.core.context import AppContext
from keel.core.logging import get_logger
from keel.storage.backends import BackendUnavailable, ListedBlob
from keel.storage.models import StorageObject, StorageUpload, StorageUploadPart
from keel.storage.service.multipart import UPLOADS_PREFIX
from keel.storage.service.runtime import storage_runtime

log = get_logger(__name__)

#: Blobs one check against the rows handles.
BATCH = 500


@dataclass
class OrphansDeleted:
    blobs: int = 0
    bytes: int = 0


def orphan_cutoff(context: AppContext, now: datetime) -> datetime:
    """Blobs last written before this may be orphans; later ones may be writes in flight."""
    return now - timedelta(hours=context.settings.storage.orphan_grace_hours)


def upload_id_of(locator: str) -> str | None:
    """The upload a part's locator (``uploads/<upload id>/<part>``) belongs to."""
    segments = locator.split("/")
    return segments[1] if len(segments) > 2 and segments[0] == UPLOADS_PREFIX else None


async def delete_orphans(context: AppContext, tenant_id: str, now: datetime) -> OrphansDeleted:
    """Delete the orphan blobs of ``tenant_id`` last written before the grace (see the
    module's text); how many and their stored bytes."""
    cutoff = orphan_cutoff(context, now)
    deleted = OrphansDeleted()
    blobs = storage_runtime(context).blobs
    for prefix in (tenant_id, UPLOADS_PREFIX):
        batch: list[ListedBlob] = []
        async with contextlib.aclosing(blobs.list_blobs(prefix)) as listing:
            async for blob in listing:
                if blob.modified_at >= cutoff:
                    continue
                batch.append(blob)
                if len(batch) >= BATCH:
                    await _delete_unnamed(context, tenant_id, batch, deleted)
                    batch = []
        if batch:
            await _delete_unnamed(context, tenant_id, batch, deleted)
    return deleted


async def _delete_unnamed(
    context: AppContext, tenant_id: str, batch: list[ListedBlob], deleted: OrphansDeleted
) -> None:
    orphans, own_uploads = await _orphans(context, tenant_id, batch)
    blobs = storage_runtime(context).blobs
    gone: list[ListedBlob] = []
    for blob in orphans:
        try:
            await blobs.delete(blob.locator)
        except (BackendUnavailable, ValueError):
            # Unavailable: the next sweep tries again. ValueError: a key of the bucket that is
            # no locator of Keel's (an S3 bucket shared with something else): not ours.
            log.warning("storage.orphan_delete_failed", locator=blob.locator, exc_info=True)
            continue
        gone.append(blob)
    deleted.blobs += len(gone)
    deleted.bytes += sum(blob.size for blob in gone)
    audited = []
    for blob in gone:
        upload_id = upload_id_of(blob.locator)
        if upload_id is None or upload_id in own_uploads:
            audited.append(blob)
        else:
            log.info("storage.orphan_part_deleted", locator=blob.locator, size=blob.size)
    if not audited:
        return
    async with context.database.session() as session:
        for blob in audited:
            record_event(
                session,
                tenant_id=tenant_id,
                action="storage.blob.orphan_delete",
                actor=SYSTEM,
                target_type="storage_blob",
                target_id=blob.locator,
                data={
                    "locator": blob.locator,
                    "size": blob.size,
                    "modified_at": blob.modified_at.isoformat(),
                },
            )


async def _orphans(
    context: AppContext, tenant_id: str, batch: list[ListedBlob]
) -> tuple[list[ListedBlob], set[str]]:
    """The blobs of ``batch`` no row of any tenant names, but for parts of another tenant's
    upload in progress; and which of the batch's uploads are the tenant's own."""
    locators = [blob.locator for blob in batch]
    upload_ids = {upload_id for blob in batch if (upload_id := upload_id_of(blob.locator))}
    async with context.database.session() as session:
        named = set(
            await session.scalars(
                select(StorageObject.locator)
                .where(StorageObject.locator.in_(locators))
                .execution_options(all_tenants=True)
            )
        )
        named.update(
            await session.scalars(
                select(StorageUploadPart.locator).where(StorageUploadPart.locator.in_(locators))
            )
        )
        owners: dict[str, str] = {}
        if upload_ids:
            rows = await session.execute(
                select(StorageUpload.id, StorageUpload.tenant_id)
                .where(StorageUpload.id.in_(upload_ids))
                .execution_options(all_tenants=True)
            )
            owners.update((upload, owner) for upload, owner in rows)
    others_uploads = {upload for upload, owner in owners.items() if owner != tenant_id}
    own_uploads = set(owners) - others_uploads
    orphans = [
        blob
        for blob in batch
        if blob.locator not in named and upload_id_of(blob.locator) not in others_uploads
    ]
    return orphans, own_uploads

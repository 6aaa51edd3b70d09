"""Multipart uploads: a large object sent as parts, in any order, in parallel, resumable.

An upload (``StorageUpload``) names the bucket and key; its parts (1 to 10,000) are stored
as blobs under ``uploads/<upload id>/`` as they arrive, each streamed at constant memory,
hashed (the part's ETag is the hex SHA-256 of its bytes) and, in an encrypted bucket,
encrypted as a stream of its own under the upload's data key (sealed by the master key,
associated data ``keel-storage-upload:<upload id>:<part number>``). A part sent again
replaces the earlier one: each attempt gets a blob of its own, the row points at the last
one to commit and the blob it replaced is deleted after.

Completion takes the parts the client lists (numbers strictly ascending, every ETag the
stored part's, every part but the last at least :data:`MIN_PART_BYTES`, as S3) and streams
them, in order and decrypted, through :func:`keel.storage.service.ingest.ingest`: the
assembled object passes the same pipeline as a single PUT (size, type by magic bytes,
encryption under a key of its own, quota, scan). The parts are deleted after. An upload not
completed within ``KEEL_STORAGE__MULTIPART_EXPIRY_HOURS`` is aborted by the lifecycle sweep.

Parts count against the bucket's and the tenant's ``quota_bytes`` as they arrive (a part
takes no object slot): each stored part reserves its size by the same conditional ``UPDATE``
as a version (:mod:`keel.storage.service.quotas`), in the transaction that records its row,
so bytes parked in uploads never completed cannot pass a quota. A part refused is a
409 ``storage-quota-exceeded`` and its blob is deleted at once; a part sent again moves the
reservation by the difference of the sizes. Whatever deletes an upload's rows (an abort, the
lifecycle sweep's expiry, a completion) gives its parts' bytes back in the same transaction.
A completion hands the parts' bytes over to the version in the version's transaction: the
parts are released, the upload's rows deleted and the object (its size and one object)
reserved together, so nothing counts twice, and a refused completion (type, size, quota)
changes nothing — the upload and its parts' reservation stay until it is aborted or expires.
Every statement touching an upload's parts first locks the upload's row, so a part, an
abort and a completion of one upload take turns.

No database transaction is held while bytes move: a part's row is written once its blob is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor
from keel.core.context import AppContext
from keel.core.db import utcnow
from keel.core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from keel.core.ids import new_id
from keel.core.lazy import lazy_module
from keel.core.logging import get_logger
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.storage.models import (
    StorageBucket,
    StorageObject,
    StorageUpload,
    StorageUploadPart,
    part_associated_data,
    upload_associated_data,
)
from keel.storage.service import quotas
from keel.storage.service.buckets import bucket_policy, get_bucket
from keel.storage.service.runtime import storage_runtime

#: The smallest part but the last (S3's rule): fewer, larger parts keep completion cheap.
MIN_PART_BYTES = 5 * 1024 * 1024
#: Part numbers run 1 to this (as S3).
MAX_PART_NUMBER = 10_000
#: Where an upload's part blobs live.
UPLOADS_PREFIX = "uploads"

log = get_logger(__name__)

if TYPE_CHECKING:
    from keel.storage import encryption
else:  # Tink on first use: a tenth of a second of every start otherwise
    encryption = lazy_module("keel.storage.encryption")


@dataclass(frozen=True)
class ListedPart:
    """A part as the client lists it at completion."""

    number: int
    etag: str


def upload_prefix(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}/{upload_id}"


def max_part_bytes(context: AppContext, bucket: StorageBucket) -> int:
    """A part is at most the bucket's largest object (the platform's when it sets none)."""
    platform = context.settings.storage.max_object_bytes
    own = bucket_policy(bucket).max_object_bytes
    return min(platform, own) if own is not None else platform


async def start_upload(
    context: AppContext,
    session: AsyncSession,
    *,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    declared_type: str | None,
    created_by: str,
) -> StorageUpload:
    """A new upload of ``key`` (checked by the caller) into ``bucket``, expiring after the
    platform's multipart expiry; in an encrypted bucket, with a sealed data key of its own."""
    upload_id = new_id()
    data_key_sealed = None
    if bucket_policy(bucket).encrypted:
        data_key_sealed = context.keyring.seal(
            encryption.new_data_key(), upload_associated_data(upload_id)
        )
    now = utcnow()
    upload = StorageUpload(
        id=upload_id,
        tenant_id=tenant_id,
        bucket_id=bucket.id,
        key=key,
        declared_content_type=declared_type,
        data_key_sealed=data_key_sealed,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(hours=context.settings.storage.multipart_expiry_hours),
    )
    session.add(upload)
    await session.flush()
    return upload


async def get_upload(
    session: AsyncSession, tenant_id: str, bucket: StorageBucket, upload_id: str
) -> StorageUpload:
    """The bucket's upload ``upload_id`` while it lives; ``NotFound`` otherwise (expired,
    completed, aborted, another bucket's or another tenant's)."""
    bind_tenant(session, tenant_id)
    upload = await session.scalar(
        select(StorageUpload).where(
            StorageUpload.id == upload_id, StorageUpload.bucket_id == bucket.id
        )
    )
    if upload is None or upload.expires_at <= utcnow():
        raise NotFound("No such upload in progress (completed, aborted or expired).")
    return upload


async def list_parts(session: AsyncSession, upload: StorageUpload) -> list[StorageUploadPart]:
    """The upload's parts so far, by number: what a client resuming the upload skips."""
    parts = await session.scalars(
        select(StorageUploadPart)
        .where(StorageUploadPart.upload_id == upload.id)
        .order_by(StorageUploadPart.number)
    )
    return list(parts)


def _check_part_number(number: int) -> None:
    if not 1 <= number <= MAX_PART_NUMBER:
        raise BadRequest(
            f"A part number is 1 to {MAX_PART_NUMBER}.", code="part-number-out-of-range"
        )


def _data_key(context: AppContext, upload: StorageUpload) -> bytes | None:
    if upload.data_key_sealed is None:
        return None
    return context.keyring.open(upload.data_key_sealed, upload_associated_data(upload.id))


class _Measured:
    """Passes chunks through, counting and hashing them; refuses more than ``limit`` bytes."""

    def __init__(self, chunks: AsyncIterable[bytes], limit: int) -> None:
        self.chunks = chunks
        self.limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self.limit:
                raise PayloadTooLarge(
                    f"A part is at most {self.limit} bytes (the bucket's largest object)."
                )
            self.digest.update(chunk)
            yield chunk


async def put_part(
    context: AppContext,
    *,
    tenant_id: str,
    bucket_name: str,
    upload_id: str,
    number: int,
    chunks: AsyncIterable[bytes],
) -> StorageUploadPart:
    """Store part ``number`` of the upload from ``chunks``; an earlier part of that number
    is replaced (its blob deleted once the new one is recorded)."""
    _check_part_number(number)
    blobs = storage_runtime(context).blobs
    async with context.database.session() as session:
        bucket = await get_bucket(session, tenant_id, bucket_name)
        upload = await get_upload(session, tenant_id, bucket, upload_id)
        limit = max_part_bytes(context, bucket)
        data_key = _data_key(context, upload)
    measured = _Measured(chunks, limit)
    stream: AsyncIterable[bytes] = measured
    if data_key is not None:
        stream = encryption.encrypt(data_key, part_associated_data(upload_id, number), measured)
    # A blob per attempt: two sends of one part never write the same blob, and the row
    # names the one whose bytes it describes.
    locator = f"{upload_prefix(upload_id)}/{number}.{new_id()}"
    await blobs.write(locator, stream)
    replaced: str | None = None
    try:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            await hold_write_lock(session)
            live = await _locked_upload(session, upload_id)
            if live is None or live.expires_at <= utcnow():
                raise NotFound("No such upload in progress (completed, aborted or expired).")
            part = await session.scalar(
                select(StorageUploadPart).where(
                    StorageUploadPart.upload_id == upload_id, StorageUploadPart.number == number
                )
            )
            earlier_size = 0 if part is None else part.size
            await _move_reservation(
                session, tenant_id, live.bucket_id, measured.size - earlier_size
            )
            if part is None:
                part = StorageUploadPart(upload_id=upload_id, number=number)
                session.add(part)
            else:
                replaced = part.locator
            part.size = measured.size
            part.etag = measured.digest.hexdigest()
            part.locator = locator
            part.created_at = utcnow()
            await session.flush()
    except BaseException:
        await blobs.delete(locator)
        raise
    if replaced is not None:
        await blobs.delete(replaced)
    return part


async def _locked_upload(session: AsyncSession, upload_id: str) -> StorageUpload | None:
    """The upload's row, locked to the end of the transaction (``None`` once it is gone)."""
    return await session.scalar(
        select(StorageUpload)
        .where(StorageUpload.id == upload_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def _move_reservation(
    session: AsyncSession, tenant_id: str, bucket_id: str, change: int
) -> None:
    """Reserve ``change`` more bytes for parts (``QuotaExceeded`` when they do not fit), or
    release them when ``change`` is negative (a part sent again, smaller)."""
    if change > 0:
        await quotas.reserve(session, tenant_id, bucket_id, size=change, objects=0)
    elif change < 0:
        await quotas.release(session, tenant_id, bucket_id, size=-change, objects=0)


async def _drop_upload_rows(session: AsyncSession, tenant_id: str, upload: StorageUpload) -> None:
    """Delete the (locked) upload's rows and give its parts' bytes back, in the caller's
    transaction."""
    reserved = await session.scalar(
        select(func.coalesce(func.sum(StorageUploadPart.size), 0)).where(
            StorageUploadPart.upload_id == upload.id
        )
    )
    await session.execute(delete(StorageUploadPart).where(StorageUploadPart.upload_id == upload.id))
    await session.execute(delete(StorageUpload).where(StorageUpload.id == upload.id))
    await _move_reservation(session, tenant_id, upload.bucket_id, -int(reserved or 0))


def check_listed_parts(
    listed: Sequence[ListedPart], stored: Sequence[StorageUploadPart]
) -> list[StorageUploadPart]:
    """The stored parts a completion lists, in order, once the list holds: numbers strictly
    ascending, every ETag the stored part's, every part but the last at least
    :data:`MIN_PART_BYTES`. ``BadRequest`` (with a ``code``) otherwise."""
    if not listed:
        raise BadRequest("A completion lists at least one part.", code="no-parts")
    by_number = {part.number: part for part in stored}
    chosen: list[StorageUploadPart] = []
    previous = 0
    for entry in listed:
        if entry.number <= previous:
            raise BadRequest(
                "The parts must be listed by strictly ascending number.", code="part-order"
            )
        previous = entry.number
        part = by_number.get(entry.number)
        etag = entry.etag.strip().strip('"').lower()
        if part is None or not hmac.compare_digest(etag.encode(), part.etag.encode()):
            raise BadRequest(
                f"Part {entry.number} was not uploaded, or its ETag does not match.",
                code="invalid-part",
                part=entry.number,
            )
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART_BYTES:
            raise BadRequest(
                f"Part {part.number} is smaller than {MIN_PART_BYTES} bytes and not the last.",
                code="part-too-small",
                part=part.number,
            )
    return chosen


async def _assembled(
    context: AppContext, upload_id: str, data_key: bytes | None, parts: Sequence[StorageUploadPart]
) -> AsyncIterator[bytes]:
    """The plaintext of ``parts`` in order, each checked against its ETag as it ends."""
    blobs = storage_runtime(context).blobs
    for part in parts:
        digest = hashlib.sha256()
        if part.size == 0:
            pieces: AsyncIterator[bytes] = _nothing()
        elif data_key is None:
            pieces = blobs.read(part.locator)
        else:
            pieces = encryption.decrypt_range(
                data_key,
                part_associated_data(upload_id, part.number),
                blobs.read(part.locator),
                part.size,
                0,
                part.size,
                0,
            )
        try:
            async for chunk in pieces:
                digest.update(chunk)
                yield chunk
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()
        if not hmac.compare_digest(digest.hexdigest().encode(), part.etag.encode()):
            raise BadRequest(
                f"Part {part.number}'s stored bytes do not match its ETag: upload it again.",
                code="invalid-part",
                part=part.number,
            )


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover


async def complete_upload(
    context: AppContext,
    *,
    tenant_id: str,
    bucket_name: str,
    upload_id: str,
    listed: Sequence[ListedPart],
    created_by: str,
    actor: Actor | None = None,
) -> StorageObject:
    """Assemble the listed parts into a version of the upload's key, through the ingest
    pipeline; the upload and its parts are gone once it is stored (their bytes handed over to
    the version in its transaction). A refusal of the pipeline (type, size, quota) leaves the
    upload as it was, parts still reserved, to be aborted or completed otherwise; an upload
    aborted or expired meanwhile is ``NotFound`` and stores nothing."""
    from keel.storage.service.ingest import ingest

    async def hand_over_parts(session: AsyncSession) -> None:
        upload = await _locked_upload(session, upload_id)
        if upload is None:
            raise NotFound("The upload was aborted or expired while it was being completed.")
        await _drop_upload_rows(session, tenant_id, upload)

    async with context.database.session() as session:
        await hold_write_lock(session)  # the claim below writes what these reads decided
        bucket = await get_bucket(session, tenant_id, bucket_name)
        upload = await get_upload(session, tenant_id, bucket, upload_id)
        parts = check_listed_parts(listed, await list_parts(session, upload))
        data_key = _data_key(context, upload)
        key, declared_type = upload.key, upload.declared_content_type
        await _claim_completion(session, upload_id)
    try:
        stored = await ingest(
            context,
            tenant_id=tenant_id,
            bucket=bucket_name,
            key=key,
            chunks=_assembled(context, upload_id, data_key, parts),
            declared_type=declared_type,
            created_by=created_by,
            actor=actor,
            via="multipart",
            before_reserve=hand_over_parts,
        )
    except BaseException:
        await asyncio.shield(_release_completion(context, tenant_id, upload_id))
        raise
    await storage_runtime(context).blobs.delete_prefix(upload_prefix(upload_id))
    return stored


#: How long a completion holds its upload: assembling the largest object, with room.
COMPLETION_HOLD = timedelta(minutes=30)


async def _claim_completion(session: AsyncSession, upload_id: str) -> None:
    """Mark the upload as being completed, one conditional UPDATE: a second completion
    meanwhile is refused (409) rather than storing a second version of the same parts."""
    now = utcnow()
    claimed = await session.execute(
        update(StorageUpload)
        .where(
            StorageUpload.id == upload_id,
            or_(StorageUpload.completing_until.is_(None), StorageUpload.completing_until < now),
        )
        .values(completing_until=now + COMPLETION_HOLD)
    )
    if not getattr(claimed, "rowcount", 0):
        raise Conflict(
            "The upload is being completed by another request.", code="upload-completing"
        )


async def _release_completion(context: AppContext, tenant_id: str, upload_id: str) -> None:
    """A failed completion leaves the upload as it was, to be completed again or aborted."""
    try:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            await session.execute(
                update(StorageUpload)
                .where(StorageUpload.id == upload_id)
                .values(completing_until=None)
            )
    except Exception:  # the hold runs out by itself
        log.warning("storage.upload.release_failed", upload_id=upload_id, exc_info=True)


async def abort_upload(
    context: AppContext, *, tenant_id: str, bucket_name: str, upload_id: str
) -> StorageUpload:
    """Abort the upload: its parts' blobs and its rows deleted. ``NotFound`` if it is not
    in progress."""
    async with context.database.session() as session:
        bucket = await get_bucket(session, tenant_id, bucket_name)
        upload = await get_upload(session, tenant_id, bucket, upload_id)
    await discard_upload(context, tenant_id, upload_id)
    return upload


async def discard_upload(context: AppContext, tenant_id: str, upload_id: str) -> bool:
    """Delete the upload's rows, giving its parts' bytes back to the quotas in the same
    transaction, then its parts' blobs; False if the rows were already gone (another
    completion, abort or sweep got there first). Blobs go after the rows so that no row ever
    names a missing blob; a crash between leaves blobs no row names, which the lifecycle
    sweep deletes as orphans."""
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        await hold_write_lock(session)
        upload = await _locked_upload(session, upload_id)
        if upload is not None:
            await _drop_upload_rows(session, tenant_id, upload)
    await storage_runtime(context).blobs.delete_prefix(upload_prefix(upload_id))
    return upload is not None

"""The ingest pipeline: every way bytes come in (PUT, signed PUT, POST form, multipart
completion) ends here, so every version passes the same checks before anyone can read it.

The bytes are streamed once, at constant memory, through:

1. the size limit — the bucket's ``max_object_bytes`` (or the platform's) and the caller's
   ``max_bytes``: 413 as soon as one byte too many arrives;
2. the type — decided from the first ``SNIFF_BYTES`` by their magic numbers; a type the
   bucket (or the caller) does not allow is 415 before a byte is written;
3. SHA-256 (the ETag) and, in an encrypting bucket, Tink's streaming AEAD under a new data
   key bound to the version id;
4. the blob store's atomic write at ``<tenant>/<bucket id>/<version id>``.

Then ONE transaction: the caller's ``before_reserve`` work if any (a multipart completion
hands its parts' reservation over there), the quota is reserved, the lock rules are checked
(a non-versioned bucket does not overwrite a version under a lock or legal hold), the version
row is inserted — ``pending`` with a ``storage.scan`` job when the bucket scans, else
``clean`` — and the upload is audited. Anything failing on the way (a refused check, a client
that goes away, a cancellation, a refused transaction) leaves no row and removes the blob:
nothing half-written ever becomes visible.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.context import AppContext
from keel.core.db import utcnow
from keel.core.errors import Conflict, PayloadTooLarge, PreconditionFailed, UnsupportedMediaType
from keel.core.ids import new_id
from keel.core.logging import get_logger
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.service import enqueue_task
from keel.storage.metrics import UploadVia, storage_metrics
from keel.storage.models import ObjectState, StorageBucket, StorageObject
from keel.storage.service import blobio, objects, quotas
from keel.storage.service.buckets import bucket_policy, get_bucket
from keel.storage.service.runtime import SCAN
from keel.storage.sniffing import SNIFF_BYTES, allowed, sniff

if TYPE_CHECKING:
    from hashlib import _Hash

log = get_logger(__name__)

__all__ = ["BeforeReserve", "ingest"]

#: Work done in the version's transaction before its quota is reserved; raising refuses it.
BeforeReserve = Callable[[AsyncSession], Awaitable[None]]


@dataclass
class _Facts:
    """What the stream taught on its way to the store."""

    size: int = 0
    sha256: _Hash = field(default_factory=hashlib.sha256)
    content_type: str | None = None


async def _inspected(
    chunks: AsyncIterable[bytes],
    facts: _Facts,
    *,
    limit: int,
    declared_type: str | None,
    allowed_types: Sequence[Sequence[str]],
) -> AsyncIterator[bytes]:
    """``chunks``, counted, typed and hashed; the first bytes are held back until the type
    is decided, so a forbidden type never reaches the store."""
    head: bytearray | None = bytearray()

    def decide(sample: bytes) -> None:
        media_type = sniff(sample, declared_type)
        if not all(allowed(media_type, patterns) for patterns in allowed_types):
            raise UnsupportedMediaType(
                f"The content is {media_type}, which the bucket does not accept.",
                code="type-not-allowed",
                content_type=media_type,
            )
        facts.content_type = media_type

    async for chunk in chunks:
        if not chunk:
            continue
        facts.size += len(chunk)
        if facts.size > limit:
            raise PayloadTooLarge(
                f"The object is larger than the {limit} bytes allowed.",
                code="object-too-large",
                max_bytes=limit,
            )
        facts.sha256.update(chunk)
        if head is None:
            yield chunk
            continue
        head += chunk
        if len(head) >= SNIFF_BYTES:
            sample = bytes(head)
            head = None
            decide(sample[:SNIFF_BYTES])
            yield sample
    if head is not None:
        sample = bytes(head)
        decide(sample)
        if sample:
            yield sample


def _limit(context: AppContext, policy_max: int | None, max_bytes: int | None) -> int:
    limit = context.settings.storage.max_object_bytes
    for lower in (policy_max, max_bytes):
        if lower is not None:
            limit = min(limit, lower)
    return limit


async def _refused(
    context: AppContext,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    actor: Actor | None,
    reason: Literal["size", "type", "quota"],
    detail: str,
) -> None:
    """Count and audit an upload refused before anything became visible."""
    storage_metrics(context).refused(reason)
    try:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            record_event(
                session,
                tenant_id=tenant_id,
                action="storage.object.reject",
                actor=actor,
                target_type="storage_bucket",
                target_id=bucket.name,
                reason=detail[:500],
                data={"bucket": bucket.name, "key": key, "refusal": reason},
            )
    except Exception:  # the refusal stands whether or not its record could be kept
        log.warning("storage.reject_audit_failed", exc_info=True)


async def ingest(
    context: AppContext,
    *,
    tenant_id: str,
    bucket: StorageBucket | str,
    key: str,
    chunks: AsyncIterable[bytes],
    declared_type: str | None,
    created_by: str,
    max_bytes: int | None = None,
    allowed_types: Sequence[str] | None = None,
    actor: Actor | None = None,
    if_absent: bool = False,
    via: UploadVia = "put",
    before_reserve: BeforeReserve | None = None,
) -> StorageObject:
    """Store ``chunks`` as a new version of ``key`` in ``bucket`` (the row, or its name),
    through the whole pipeline (see the module's text); the committed version row.

    ``allowed_types`` narrows the bucket's types (a presigned form's condition);
    ``if_absent`` (``If-None-Match: *``) refuses with 412 when the key has a version that is
    not a delete marker. ``created_by`` is ``<principal type>:<id>``; ``actor`` the audit's.
    ``before_reserve`` runs in the version's transaction, before its quota is reserved, and
    commits or rolls back with it (a multipart completion releases its parts there).

    Errors: ``BadRequest`` (the key), ``NotFound`` (the bucket), ``PayloadTooLarge``,
    ``UnsupportedMediaType``, ``QuotaExceeded``, ``Conflict`` (a lock keeps the current
    version), ``PreconditionFailed``; whatever ``chunks`` raises (a client gone) propagates.
    In every case nothing is stored.
    """
    objects.validate_key(key)
    if isinstance(bucket, str):
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            bucket = await get_bucket(session, tenant_id, bucket)
    policy = bucket_policy(bucket)
    if if_absent:
        async with context.database.session() as session:
            bind_tenant(session, tenant_id)
            _check_absent(await objects.key_versions(session, bucket.id, key))

    version_id = new_id()
    locator = blobio.version_locator(tenant_id, bucket.id, version_id)
    data_key, sealed_key = (
        blobio.new_sealed_data_key(context, version_id) if policy.encrypted else (None, None)
    )
    # Both the bucket and the caller (a presigned form's condition) must allow the type.
    patterns = [list(policy.allowed_types)]
    if allowed_types is not None:
        patterns.append(list(allowed_types))
    facts = _Facts()
    stream = _inspected(
        chunks,
        facts,
        limit=_limit(context, policy.max_object_bytes, max_bytes),
        declared_type=declared_type,
        allowed_types=patterns,
    )
    try:
        await blobio.write_version(
            context, locator, stream, version_id=version_id, data_key=data_key
        )
    except PayloadTooLarge as exc:
        await _refused(context, tenant_id, bucket, key, actor, "size", str(exc))
        raise
    except UnsupportedMediaType as exc:
        await _refused(context, tenant_id, bucket, key, actor, "type", str(exc))
        raise

    assert facts.content_type is not None
    try:
        version, gone = await _commit(
            context,
            tenant_id=tenant_id,
            bucket=bucket,
            key=key,
            version_id=version_id,
            locator=locator,
            facts=facts,
            declared_type=declared_type,
            sealed_key=sealed_key,
            created_by=created_by,
            actor=actor,
            if_absent=if_absent,
            before_reserve=before_reserve,
        )
    except BaseException as exc:
        # The row never committed: the blob must not outlive it (even when cancelled).
        await asyncio.shield(blobio.delete_blobs(context, [locator]))
        if isinstance(exc, quotas.QuotaExceeded):
            await _refused(context, tenant_id, bucket, key, actor, "quota", str(exc))
        raise
    storage_metrics(context).uploaded(via, version.size)
    if version.state == ObjectState.clean:
        storage_metrics(context).verdict("clean")
    await blobio.delete_blobs(context, gone)
    return version


def _check_absent(versions: Sequence[StorageObject]) -> None:
    if versions and not versions[0].is_delete_marker:
        raise PreconditionFailed("The object exists already (If-None-Match: *).")


async def _commit(
    context: AppContext,
    *,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    version_id: str,
    locator: str,
    facts: _Facts,
    declared_type: str | None,
    sealed_key: bytes | None,
    created_by: str,
    actor: Actor | None,
    if_absent: bool,
    before_reserve: BeforeReserve | None,
) -> tuple[StorageObject, list[str]]:
    """The version's transaction; the row and the locators of older versions it replaced."""
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        # SQLite: uploads of the tenant take turns from here; PostgreSQL: the reservation's
        # UPDATE holds the bucket's row, so the checks below see every committed upload.
        await hold_write_lock(session)
        if before_reserve is not None:
            await before_reserve(session)
        await quotas.reserve(session, tenant_id, bucket.id, size=facts.size, objects=1)
        # The policy as it is now (a change since the stream began applies).
        current = await get_bucket(session, tenant_id, bucket.name)
        if current.id != bucket.id:
            raise Conflict("The bucket was replaced during the upload.")
        bucket = current
        policy = bucket_policy(bucket)
        now = utcnow()
        versions = await objects.key_versions(session, bucket.id, key, for_update=True)
        if if_absent:
            _check_absent(versions)
        if not policy.versioning:
            for other in versions:
                if other.legal_hold or objects.is_locked(other, now):
                    raise Conflict(
                        "The object's current version is under a lock or legal hold: "
                        "it cannot be overwritten.",
                        code="object-locked",
                        version_id=other.id,
                    )
        lock_mode, retain_until = objects.default_retention(policy, now)
        scanned = policy.scan
        version = StorageObject(
            id=version_id,
            tenant_id=tenant_id,
            bucket_id=bucket.id,
            key=key,
            state=ObjectState.pending if scanned else ObjectState.clean,
            is_delete_marker=False,
            size=facts.size,
            content_type=facts.content_type,
            declared_content_type=declared_type[:255] if declared_type else None,
            etag=facts.sha256.hexdigest(),
            locator=locator,
            encrypted=sealed_key is not None,
            data_key_sealed=sealed_key,
            lock_mode=lock_mode,
            retain_until=retain_until,
            legal_hold=False,
            created_by=created_by[:200],
            created_at=now,
            clean_at=None if scanned else now,
        )
        session.add(version)
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.object.upload",
            actor=actor,
            target_type="storage_object",
            target_id=version_id,
            data={
                "bucket": bucket.name,
                "key": key,
                "version_id": version_id,
                "size": facts.size,
                "content_type": facts.content_type,
                "etag": version.etag,
                "state": version.state,
            },
        )
        gone: list[str] = []
        if scanned:
            await enqueue_task(session, tenant_id, SCAN, {"version_id": version_id})
        else:
            gone = await objects.became_clean(session, tenant_id, bucket, version)
    return version, gone

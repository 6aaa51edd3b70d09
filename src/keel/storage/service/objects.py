"""Objects and their versions: which version a reader gets, deletes under locks, legal holds
and retention, listing, and what happens when a version becomes clean.

A key's versions are rows of ``storage_objects``, newest last by ``(created_at, id)`` (the
id is a UUIDv7, so it breaks ties in time order). Readers get the newest ``clean`` version
that no newer delete marker hides; ``pending``, ``infected`` and ``rejected`` versions are
never served to anyone. A non-versioned bucket keeps older versions only until a newer one
becomes clean (then they go, unless a lock, a legal hold or the minimum retention keeps
them).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from keel.core.audit import Actor, record_event
from keel.core.context import PLATFORM_QUEUE_PREFIX
from keel.core.db import utcnow
from keel.core.errors import BadRequest, Conflict, Forbidden, NotFound
from keel.core.logging import get_logger
from keel.core.sqlite import hold_write_lock
from keel.jobs.service import NewJob, enqueue_signalled
from keel.storage.models import LockMode, ObjectState, StorageBucket, StorageObject
from keel.storage.schemas import MAX_KEY_BYTES, BucketPolicy, ObjectInfo
from keel.storage.service import quotas
from keel.storage.service.buckets import bucket_policy

log = get_logger(__name__)

#: Seconds a client is told to wait before asking again for a version still being scanned.
NOT_READY_RETRY_SECONDS = 5
#: The most keys one listing page holds.
MAX_LIST_LIMIT = 1000


# --- keys -----------------------------------------------------------------------------------


def validate_key(key: str) -> str:
    """``key`` if it is a valid object key, else ``BadRequest`` saying why.

    Valid: 1 to 1,024 bytes of UTF-8, no control character (NUL included), no leading ``/``,
    and no ``.`` or ``..`` segment (a key must name one object whatever a client, proxy or
    file system makes of its path).
    """
    if not key:
        raise BadRequest("An object key must not be empty.", code="invalid-key")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("An object key must be valid UTF-8.", code="invalid-key") from None
    if size > MAX_KEY_BYTES:
        raise BadRequest(
            f"An object key is at most {MAX_KEY_BYTES} bytes of UTF-8.", code="invalid-key"
        )
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in key):
        raise BadRequest(
            "An object key holds no control characters (NUL included).", code="invalid-key"
        )
    if key.startswith("/"):
        raise BadRequest("An object key does not start with '/'.", code="invalid-key")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise BadRequest("An object key has no '.' or '..' segment.", code="invalid-key")
    return key


# --- locks and retention (pure) -----------------------------------------------------------


def is_locked(version: StorageObject, now: datetime) -> bool:
    """Whether an object lock still retains ``version``."""
    return (
        version.lock_mode is not None
        and version.retain_until is not None
        and version.retain_until > now
    )


def within_min_retention(version: StorageObject, policy: BucketPolicy, now: datetime) -> bool:
    """Whether the bucket's minimum retention still keeps ``version``."""
    days = policy.retention.min_days
    return days > 0 and version.created_at + timedelta(days=days) > now


def is_protected(version: StorageObject, policy: BucketPolicy, now: datetime) -> bool:
    """Whether anything keeps ``version`` from being deleted (lock, legal hold, retention)."""
    return (
        version.legal_hold or is_locked(version, now) or within_min_retention(version, policy, now)
    )


def deletion_refusal(
    version: StorageObject,
    policy: BucketPolicy,
    now: datetime,
    *,
    bypass_governance: bool,
) -> str | None:
    """Why ``version`` may not be deleted now (``None``: it may). A compliance lock and a
    legal hold refuse everyone; a governance lock yields only to ``bypass_governance``
    (``storage:objects:admin`` with ``X-Keel-Bypass-Governance: true``)."""
    if version.legal_hold:
        return "The version is under a legal hold."
    if is_locked(version, now):
        if version.lock_mode == LockMode.compliance:
            return "The version is under a compliance lock until its retention ends."
        if not bypass_governance:
            return (
                "The version is under a governance lock (an objects admin may bypass it "
                "with X-Keel-Bypass-Governance: true)."
            )
    if within_min_retention(version, policy, now):
        return f"The bucket keeps every version at least {policy.retention.min_days} days."
    return None


def default_retention(policy: BucketPolicy, now: datetime) -> tuple[str | None, datetime | None]:
    """The lock mode and retention a new version gets from its bucket's lock rule."""
    if policy.lock is None:
        return None, None
    return policy.lock.mode, now + timedelta(days=policy.lock.days)


# --- reading --------------------------------------------------------------------------------


def newest_first() -> tuple[object, object]:
    return StorageObject.created_at.desc(), StorageObject.id.desc()


async def key_versions(
    session: AsyncSession, bucket_id: str, key: str, *, for_update: bool = False
) -> list[StorageObject]:
    """Every version of ``key``, newest first."""
    statement = (
        select(StorageObject)
        .where(StorageObject.bucket_id == bucket_id, StorageObject.key == key)
        .order_by(*newest_first())  # type: ignore[arg-type]
    )
    if for_update:
        statement = statement.with_for_update()
    return list(await session.scalars(statement))


def not_ready(detail: str) -> Conflict:
    return Conflict(
        detail,
        code="object-not-ready",
        headers={"Retry-After": str(NOT_READY_RETRY_SECONDS)},
    )


def quarantined(version: StorageObject) -> Forbidden:
    # The reason (a signature name, "scan failed") is for the owner's object info only.
    return Forbidden(
        f"The version is {version.state}: it is quarantined and never served.",
        code="object-quarantined",
    )


def check_readable(version: StorageObject) -> StorageObject:
    """``version`` if it may be served, else the error a reader gets."""
    if version.is_delete_marker:
        raise NotFound("The version is a delete marker.")
    if version.state == ObjectState.pending:
        raise not_ready("The version is still being checked; ask again shortly.")
    if version.state != ObjectState.clean:
        raise quarantined(version)
    return version


def pick_readable(versions: Sequence[StorageObject]) -> StorageObject:
    """The version a reader of the key gets (``versions`` newest first): the newest clean one
    that no newer delete marker hides; else 409 not-ready (one is still being checked), 403
    quarantined (only quarantined ones), or 404."""
    waiting: StorageObject | None = None
    refused: StorageObject | None = None
    for version in versions:
        if version.is_delete_marker:
            break
        if version.state == ObjectState.clean:
            return version
        if version.state == ObjectState.pending:
            waiting = waiting or version
        else:
            refused = refused or version
    if waiting is not None:
        check_readable(waiting)
    if refused is not None:
        check_readable(refused)
    raise NotFound("No such object.")


async def readable_version(
    session: AsyncSession, bucket: StorageBucket, key: str, version_id: str | None
) -> StorageObject:
    """The version a download of ``key`` (or of ``version_id``) serves, or the 4xx why not."""
    validate_key(key)
    if version_id is not None:
        version = await session.get(StorageObject, version_id)
        if version is None or version.bucket_id != bucket.id or version.key != key:
            raise NotFound("No such version of the object.")
        return check_readable(version)
    return pick_readable(await key_versions(session, bucket.id, key))


def object_info(bucket_name: str, version: StorageObject) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket_name,
        key=version.key,
        version_id=version.id,
        state=version.state,
        reason=version.reason,
        is_delete_marker=version.is_delete_marker,
        size=version.size,
        content_type=version.content_type,
        declared_content_type=version.declared_content_type,
        etag=version.etag,
        encrypted=version.encrypted,
        lock_mode=version.lock_mode,
        retain_until=version.retain_until,
        legal_hold=version.legal_hold,
        created_at=version.created_at,
        clean_at=version.clean_at,
    )


# --- quota and locking ---------------------------------------------------------------------


async def lock_bucket(session: AsyncSession, bucket_id: str) -> None:
    """Hold the bucket's row until the transaction ends (SQLite: the database's write lock).

    Every unit of work that deletes versions or moves the bucket's usage takes it FIRST
    (an upload's quota reservation updates the row, which takes it too), before any version
    row: two verdicts on versions of one key each delete the other's older versions, and
    without one lock taken first they deadlocked on PostgreSQL.
    """
    await hold_write_lock(session)
    await session.execute(
        select(StorageBucket.id).where(StorageBucket.id == bucket_id).with_for_update()
    )


async def release_versions(
    session: AsyncSession, tenant_id: str, bucket_id: str, versions: Sequence[StorageObject]
) -> None:
    """Give back the usage of ``versions`` whose rows (and blobs) go (delete markers hold none)."""
    stored = [version for version in versions if not version.is_delete_marker]
    if stored:
        await quotas.release(
            session,
            tenant_id,
            bucket_id,
            size=sum(version.size for version in stored),
            objects=len(stored),
        )


async def delete_rows(
    session: AsyncSession, tenant_id: str, bucket_id: str, versions: Sequence[StorageObject]
) -> list[str]:
    """Delete the rows of ``versions`` and release the usage of those this unit of work
    deleted (a concurrent one may have deleted some first: their usage is released once);
    the locators whose blobs the caller deletes once this commits."""
    if not versions:
        return []
    result = await session.execute(
        delete(StorageObject)
        .where(StorageObject.id.in_([version.id for version in versions]))
        .returning(StorageObject.id)
        .execution_options(synchronize_session=False)
    )
    deleted = {row[0] for row in result}
    gone = [version for version in versions if version.id in deleted]
    await release_versions(session, tenant_id, bucket_id, gone)
    return [version.locator for version in gone if version.locator]


# --- becoming clean -------------------------------------------------------------------------


async def supersede_older(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    version: StorageObject,
    policy: BucketPolicy,
) -> list[str]:
    """In a non-versioned bucket, the versions of the key older than ``version`` (now clean)
    go, except those a lock, a legal hold or the minimum retention keeps; their locators."""
    if policy.versioning:
        return []
    now = utcnow()
    older = [
        other
        for other in await key_versions(session, bucket.id, version.key)
        if (other.created_at, other.id) < (version.created_at, version.id)
        and not is_protected(other, policy, now)
    ]
    return await delete_rows(session, tenant_id, bucket.id, older)


async def enqueue_clean_hook(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    version: StorageObject,
    policy: BucketPolicy,
) -> None:
    """The bucket's ``on_clean`` job for the fleet's worker (none for Keel's own queues)."""
    hook = policy.on_clean
    if hook is None:
        return
    if hook.queue.startswith(PLATFORM_QUEUE_PREFIX):
        log.warning("storage.clean_hook_refused", bucket=bucket.name, queue=hook.queue)
        return
    args = {
        "bucket": bucket.name,
        "key": version.key,
        "version_id": version.id,
        "size": version.size,
        "content_type": version.content_type,
        "etag": version.etag,
    }
    await enqueue_signalled(session, tenant_id, NewJob(hook.queue, hook.task, args))


async def became_clean(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    version: StorageObject,
) -> list[str]:
    """What follows a version's becoming clean, in its transaction: the hook job and the
    cleanup of older versions (their locators, for after the commit)."""
    policy = bucket_policy(bucket)
    await enqueue_clean_hook(session, tenant_id, bucket, version, policy)
    return await supersede_older(session, tenant_id, bucket, version, policy)


# --- deleting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deleted:
    """What a delete did: the versions removed, or the delete marker added."""

    removed: list[StorageObject]
    marker: StorageObject | None
    #: Blobs to delete once the transaction commits.
    locators: list[str]


async def delete_object(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    *,
    version_id: str | None,
    bypass_governance: bool,
    actor: Actor | None,
    created_by: str,
) -> Deleted:
    """Delete ``key``: in a versioned bucket a delete marker hides it (its versions stay),
    or ``version_id`` goes for good; in a non-versioned bucket every version goes. A version
    a lock, a legal hold or the minimum retention keeps refuses the whole delete (409)."""
    validate_key(key)
    policy = bucket_policy(bucket)
    await lock_bucket(session, bucket.id)
    now = utcnow()
    versions = await key_versions(session, bucket.id, key, for_update=True)
    marker: StorageObject | None = None
    if version_id is not None:
        chosen = [version for version in versions if version.id == version_id]
        if not chosen:
            raise NotFound("No such version of the object.")
        targets = chosen
    elif policy.versioning:
        if not versions or versions[0].is_delete_marker:
            raise NotFound("No such object.")
        targets = []
        marker = StorageObject(
            tenant_id=tenant_id,
            bucket_id=bucket.id,
            key=key,
            state=ObjectState.clean,
            is_delete_marker=True,
            size=0,
            content_type="application/octet-stream",
            etag="",
            locator="",
            encrypted=False,
            created_by=created_by,
            created_at=now,
            clean_at=now,
        )
        session.add(marker)
        await session.flush()
    else:
        if not versions:
            raise NotFound("No such object.")
        targets = versions
    for version in targets:
        refusal = deletion_refusal(version, policy, now, bypass_governance=bypass_governance)
        if refusal is not None:
            raise Conflict(refusal, code="object-locked", version_id=version.id)
    locators = await delete_rows(session, tenant_id, bucket.id, targets)
    for version in targets:
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.object.delete",
            actor=actor,
            target_type="storage_object",
            target_id=version.id,
            data={
                "bucket": bucket.name,
                "key": key,
                "version_id": version.id,
                "size": version.size,
                "bypass_governance": bypass_governance and is_locked(version, now),
            },
        )
    if marker is not None:
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.object.delete",
            actor=actor,
            target_type="storage_object",
            target_id=marker.id,
            data={"bucket": bucket.name, "key": key, "delete_marker": marker.id},
        )
    return Deleted(targets, marker, locators)


# --- retention and legal hold ---------------------------------------------------------------


async def target_version(
    session: AsyncSession, bucket: StorageBucket, key: str, version_id: str | None
) -> StorageObject:
    """The version a retention or legal hold change is for: ``version_id``, or the key's
    newest version that holds bytes (not a delete marker)."""
    validate_key(key)
    if version_id is not None:
        version = await session.get(StorageObject, version_id, with_for_update=True)
        if version is None or version.bucket_id != bucket.id or version.key != key:
            raise NotFound("No such version of the object.")
    else:
        versions = await key_versions(session, bucket.id, key, for_update=True)
        if not versions or versions[0].is_delete_marker:
            raise NotFound("No such object.")
        version = versions[0]
    if version.is_delete_marker:
        raise BadRequest("A delete marker holds no bytes to retain.")
    return version


def retention_refusal(
    version: StorageObject,
    mode: str,
    retain_until: datetime,
    now: datetime,
    *,
    bypass_governance: bool,
) -> str | None:
    """Why ``version``'s retention may not become (``mode``, ``retain_until``) (``None``: it
    may). Under a compliance lock only a later date in compliance mode is accepted; a
    governance lock is shortened or weakened only with the bypass."""
    if retain_until <= now:
        return "retain_until must be in the future."
    if not is_locked(version, now):
        return None
    assert version.retain_until is not None
    shortened = retain_until < version.retain_until
    if version.lock_mode == LockMode.compliance:
        if mode != LockMode.compliance or shortened:
            return "A compliance lock can only be extended, by anyone."
        return None
    # Governance: a later date or compliance mode only strengthens it; a shorter one needs
    # the bypass.
    if shortened and not bypass_governance:
        return (
            "Shortening a governance lock needs an objects admin and "
            "X-Keel-Bypass-Governance: true."
        )
    return None


async def set_retention(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    *,
    mode: str,
    retain_until: datetime,
    version_id: str | None,
    bypass_governance: bool,
    actor: Actor | None,
) -> StorageObject:
    version = await target_version(session, bucket, key, version_id)
    now = utcnow()
    refusal = retention_refusal(
        version, mode, retain_until, now, bypass_governance=bypass_governance
    )
    if refusal is not None:
        raise Conflict(refusal, code="object-locked", version_id=version.id)
    previous = (version.lock_mode, version.retain_until)
    version.lock_mode = mode
    version.retain_until = retain_until
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.object.retention",
        actor=actor,
        target_type="storage_object",
        target_id=version.id,
        data={
            "bucket": bucket.name,
            "key": key,
            "version_id": version.id,
            "mode": mode,
            "retain_until": retain_until.isoformat(),
            "previous_mode": previous[0],
            "previous_retain_until": previous[1].isoformat() if previous[1] else None,
        },
    )
    await session.flush()
    return version


async def set_legal_hold(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    key: str,
    *,
    on: bool,
    version_id: str | None,
    actor: Actor | None,
) -> StorageObject:
    version = await target_version(session, bucket, key, version_id)
    version.legal_hold = on
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.object.legal_hold",
        actor=actor,
        target_type="storage_object",
        target_id=version.id,
        data={"bucket": bucket.name, "key": key, "version_id": version.id, "on": on},
    )
    await session.flush()
    return version


# --- listing --------------------------------------------------------------------------------


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The key a cursor of :func:`encode_cursor` carries; ``BadRequest`` for anything else."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        key = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("The cursor is not one this API handed out.") from None
    if not key or encode_cursor(key) != cursor:
        raise BadRequest("The cursor is not one this API handed out.")
    return key


async def list_objects(
    session: AsyncSession,
    bucket: StorageBucket,
    *,
    prefix: str,
    after: str | None,
    limit: int,
) -> tuple[list[StorageObject], str | None]:
    """The newest version of each key under ``prefix`` that is not a delete marker, in key
    order after ``after``; and the next page's cursor (``None``: this was the last)."""
    ranked = select(
        StorageObject,
        func.row_number()
        .over(partition_by=StorageObject.key, order_by=newest_first())  # type: ignore[arg-type]
        .label("rank"),
    ).where(StorageObject.bucket_id == bucket.id)
    if prefix:
        ranked = ranked.where(StorageObject.key.startswith(prefix, autoescape=True))
    if after is not None:
        ranked = ranked.where(StorageObject.key > after)
    subquery = ranked.subquery()
    newest = aliased(StorageObject, subquery)
    rows = list(
        await session.scalars(
            select(newest)
            .where(subquery.c.rank == 1, subquery.c.is_delete_marker.is_(False))
            .order_by(subquery.c.key)
            .limit(limit + 1)
        )
    )
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].key)
    return rows, None

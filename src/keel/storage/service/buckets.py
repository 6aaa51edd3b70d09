"""Buckets: their names, policies (with the rules a policy change must keep), and the lookups
the rest of the service uses (``get_bucket``, ``bucket_policy``).

A policy change may tighten object protection but never loosen it: a lock, once set, is never
removed; a compliance lock is never turned into a governance one nor shortened; a bucket with
a lock never stops versioning. A bucket's quota may be set below what it holds: it then only
refuses new uploads. The policy's quotas are mirrored into the row's quota columns, which the
conditional ``UPDATE``s of :mod:`keel.storage.service.quotas` compare against.

Every change is audited in the same unit of work (``storage.bucket.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.db import utcnow
from keel.core.errors import BadRequest, Conflict, NotFound, PreconditionFailed, ValidationFailed
from keel.core.http import check_if_match, etag_for
from keel.core.tenancy import bind_tenant
from keel.storage.models import StorageBucket, StorageObject, StorageUpload
from keel.storage.schemas import BUCKET_NAME, BucketPolicy
from keel.storage.service import quotas

#: The most buckets one listing returns (a tenant holds a handful, as S3's default of 100).
MAX_BUCKETS_LISTED = 1000


def check_bucket_name(name: str) -> str:
    """``name`` when it is a bucket name (3-63 of ``a-z 0-9 . -``, starting and ending with a
    letter or digit, no ``..``); 422 otherwise."""
    if not BUCKET_NAME.fullmatch(name) or ".." in name:
        raise ValidationFailed(
            "A bucket name is 3-63 lowercase letters, digits, dots and hyphens, starting and "
            "ending with a letter or digit, without '..'.",
            field="bucket",
        )
    return name


async def get_bucket(
    session: AsyncSession, tenant_id: str, name: str, *, for_update: bool = False
) -> StorageBucket:
    """The tenant's bucket called ``name``; ``NotFound`` otherwise (another tenant's too)."""
    bind_tenant(session, tenant_id)
    statement = select(StorageBucket).where(
        StorageBucket.tenant_id == tenant_id, StorageBucket.name == name
    )
    if for_update:
        statement = statement.with_for_update()
    bucket = await session.scalar(statement)
    if bucket is None:
        raise NotFound(f"No bucket named {name!r}.")
    return bucket


def bucket_policy(bucket: StorageBucket) -> BucketPolicy:
    """The bucket's policy as the wire model (stored as its JSON)."""
    return BucketPolicy.model_validate(bucket.policy)


async def list_buckets(session: AsyncSession, tenant_id: str) -> list[StorageBucket]:
    bind_tenant(session, tenant_id)
    statement = (
        select(StorageBucket)
        .where(StorageBucket.tenant_id == tenant_id)
        .order_by(StorageBucket.name)
        .limit(MAX_BUCKETS_LISTED)
    )
    return list(await session.scalars(statement))


def check_scanner(policy: BucketPolicy, *, scanner: bool) -> None:
    """``scanner``: a scanner is configured (``KEEL_STORAGE__CLAMD_ADDRESS``). Without one a
    bucket that scans would keep every upload unreadable, so it is refused up front (400),
    saying what to do."""
    if policy.scan and not scanner:
        raise BadRequest(
            "This bucket's policy requires scanning, and no scanner is configured: set "
            'KEEL_STORAGE__CLAMD_ADDRESS to a clamd, or create the bucket with "scan": false.',
            code="scanner-not-configured",
            field="scan",
        )


def check_policy(policy: BucketPolicy, *, platform_max_object_bytes: int) -> None:
    """The rules any policy keeps, new or changed: 400 when one is broken."""
    if policy.max_object_bytes is not None and policy.max_object_bytes > platform_max_object_bytes:
        raise BadRequest(
            f"max_object_bytes may not exceed the platform's largest object "
            f"({platform_max_object_bytes} bytes).",
            field="max_object_bytes",
            limit=platform_max_object_bytes,
        )


def check_policy_change(old: BucketPolicy, new: BucketPolicy) -> None:
    """409 when ``new`` would loosen the protection ``old`` gives stored versions."""
    if old.lock is None:
        return
    if new.lock is None:
        raise Conflict("A bucket's object lock can never be removed once set.", field="lock")
    if old.lock.mode == "compliance":
        if new.lock.mode != "compliance":
            raise Conflict(
                "A compliance lock can never be turned into a governance lock.", field="lock"
            )
        if new.lock.days < old.lock.days:
            raise Conflict(
                f"A compliance lock's days can never be lowered (now {old.lock.days}).",
                field="lock.days",
            )
    if old.versioning and not new.versioning:
        raise Conflict(
            "Versioning can never be turned off in a bucket with an object lock.",
            field="versioning",
        )


def _policy_document(policy: BucketPolicy) -> dict[str, Any]:
    return policy.model_dump(mode="json")


@dataclass(frozen=True)
class PutOutcome:
    bucket: StorageBucket
    #: Whether the bucket was made by this call (201) rather than changed or left as it was.
    created: bool


async def put_bucket(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    policy: BucketPolicy,
    *,
    actor: Actor,
    platform_max_object_bytes: int,
    scanner: bool = True,
    if_match: str | None = None,
    if_none_match: str | None = None,
) -> PutOutcome:
    """Create bucket ``name`` with ``policy``, or replace its policy.

    - ``If-None-Match: *``: create only (412 when it exists).
    - ``If-Match: "<revision>"``: replace only that revision (412 when it changed or the
      bucket does not exist).
    - neither: create; on an existing bucket, the same policy again is a no-op (a retried
      create) and another policy is 409 (replacing needs ``If-Match``).
    """
    check_policy(policy, platform_max_object_bytes=platform_max_object_bytes)
    bind_tenant(session, tenant_id)
    if if_none_match is not None and if_none_match.strip() != "*":
        raise BadRequest("If-None-Match on a bucket write may only be '*' (create only).")
    existing = await session.scalar(
        select(StorageBucket).where(
            StorageBucket.tenant_id == tenant_id, StorageBucket.name == name
        )
    )
    if existing is None:
        if if_match is not None:
            raise PreconditionFailed(f"No bucket named {name!r} to replace.")
        check_bucket_name(name)
        check_scanner(policy, scanner=scanner)
        return PutOutcome(await _create(session, tenant_id, name, policy, actor), True)
    if if_none_match is not None:
        raise PreconditionFailed(
            f"A bucket named {name!r} exists.", current_etag=etag_for(existing.revision)
        )
    if if_match is None:
        if bucket_policy(existing) == policy:
            return PutOutcome(existing, False)
        raise Conflict(
            f"A bucket named {name!r} exists; send If-Match with its ETag to change its policy.",
            current_etag=etag_for(existing.revision),
        )
    check_if_match(if_match, existing.revision, required=True)
    check_scanner(policy, scanner=scanner)
    return PutOutcome(await _replace(session, tenant_id, existing, policy, actor), False)


async def _create(
    session: AsyncSession, tenant_id: str, name: str, policy: BucketPolicy, actor: Actor
) -> StorageBucket:
    now = utcnow()
    bucket = StorageBucket(
        tenant_id=tenant_id,
        name=name,
        policy=_policy_document(policy),
        quota_bytes=policy.quota_bytes,
        quota_objects=policy.quota_objects,
        used_bytes=0,
        used_objects=0,
        revision=1,
        created_by=_actor_name(actor),
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(bucket)
    except IntegrityError:
        # A concurrent create of the same name won the unique constraint.
        raise Conflict(f"A bucket named {name!r} exists.") from None
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.bucket.create",
        actor=actor,
        target_type="storage_bucket",
        target_id=name,
        data={"bucket_id": bucket.id, "policy": _policy_document(policy)},
    )
    return bucket


async def _replace(
    session: AsyncSession,
    tenant_id: str,
    bucket: StorageBucket,
    policy: BucketPolicy,
    actor: Actor,
) -> StorageBucket:
    old = bucket_policy(bucket)
    if old == policy:
        return bucket
    check_policy_change(old, policy)
    revision = bucket.revision
    # Conditional on the revision read: a concurrent change in between makes this one 412
    # (the same on SQLite, where the read above took no lock).
    result = await session.execute(
        update(StorageBucket)
        .where(
            StorageBucket.tenant_id == tenant_id,
            StorageBucket.id == bucket.id,
            StorageBucket.revision == revision,
        )
        .values(
            policy=_policy_document(policy),
            quota_bytes=policy.quota_bytes,
            quota_objects=policy.quota_objects,
            revision=revision + 1,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if quotas.rowcount(result) != 1:
        raise PreconditionFailed("The bucket changed since it was read.")
    await session.refresh(bucket)
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.bucket.update",
        actor=actor,
        target_type="storage_bucket",
        target_id=bucket.name,
        data={
            "bucket_id": bucket.id,
            "revision": bucket.revision,
            "before": _policy_document(old),
            "after": _policy_document(policy),
        },
    )
    return bucket


async def delete_bucket(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    actor: Actor,
    if_match: str | None = None,
) -> None:
    """Delete an empty bucket: 409 while it holds any version (quarantined and delete markers
    included) or multipart upload."""
    bucket = await get_bucket(session, tenant_id, name, for_update=True)
    check_if_match(if_match, bucket.revision, required=False)
    busy = await session.scalar(
        select(
            exists().where(
                StorageObject.tenant_id == tenant_id, StorageObject.bucket_id == bucket.id
            )
            | exists().where(
                StorageUpload.tenant_id == tenant_id, StorageUpload.bucket_id == bucket.id
            )
        )
    )
    if busy:
        raise Conflict(f"The bucket {name!r} is not empty: delete its versions and uploads first.")
    used_bytes, used_objects = bucket.used_bytes, bucket.used_objects
    try:
        async with session.begin_nested():
            await session.delete(bucket)
    except IntegrityError:
        # A version or upload arrived after the check (the foreign key refuses the delete).
        raise Conflict(f"The bucket {name!r} is not empty.") from None
    # What the bucket still counted (nothing, once its versions are gone) leaves the tenant's
    # usage with it. The bucket's row first, then the tenant's: the order every reservation
    # takes their locks in.
    await quotas.release_tenant(session, tenant_id, size=used_bytes, objects=used_objects)
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.bucket.delete",
        actor=actor,
        target_type="storage_bucket",
        target_id=name,
        data={"bucket_id": bucket.id},
    )


def _actor_name(actor: Actor) -> str:
    return f"{actor.type or 'anonymous'}:{actor.id or '-'}"[:200]

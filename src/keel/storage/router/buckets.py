"""Buckets and quotas: create a bucket or change its policy (``If-Match``), read, list and
delete (empty only) buckets; the tenant's usage and quota."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Response

from keel.auth.dependencies import CallerActor
from keel.core.deps import Context, DbSession
from keel.core.http import etag_for, is_not_modified
from keel.storage import schemas
from keel.storage.auth import BucketAdmin, BucketReader, BucketWriter
from keel.storage.models import StorageBucket
from keel.storage.service import buckets, quotas

router = APIRouter(tags=["storage"])

#: Longer than any bucket name so that a bad one is told why (422) rather than only refused.
BucketName = Annotated[str, Path(min_length=1, max_length=255)]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256)]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=256)]


def bucket_out(bucket: StorageBucket) -> schemas.BucketOut:
    return schemas.BucketOut(
        name=bucket.name,
        policy=buckets.bucket_policy(bucket),
        used_bytes=bucket.used_bytes,
        used_objects=bucket.used_objects,
        revision=bucket.revision,
        created_at=bucket.created_at,
        updated_at=bucket.updated_at,
    )


@router.get("/v1/buckets", response_model=schemas.BucketList)
async def list_buckets(principal: BucketReader, session: DbSession) -> schemas.BucketList:
    """The tenant's buckets, by name."""
    found = await buckets.list_buckets(session, principal.tenant_id)
    return schemas.BucketList(buckets=[bucket_out(bucket) for bucket in found])


@router.put(
    "/v1/buckets/{bucket}",
    response_model=schemas.BucketOut,
    responses={201: {"model": schemas.BucketOut, "description": "Created"}},
)
async def put_bucket(
    bucket: BucketName,
    principal: BucketWriter,
    actor: CallerActor,
    context: Context,
    session: DbSession,
    response: Response,
    policy: Annotated[schemas.BucketPolicy | None, Body()] = None,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> schemas.BucketOut:
    """Create bucket ``bucket`` with the policy in the body (the default policy without one):
    201. With ``If-Match: "<revision>"``, replace its policy instead (412 on another
    revision); ``If-None-Match: *`` only creates (412 when it exists). Without either, the
    same policy on an existing bucket is a no-op (200) and another one 409.

    A change may not loosen the protection of stored versions (409): a lock is never removed,
    a compliance lock never weakened or shortened, versioning never turned off under a lock.
    ``max_object_bytes`` may not exceed the platform's (400). The policy's quotas may be
    below what the bucket holds: they then refuse new uploads only."""
    outcome = await buckets.put_bucket(
        session,
        principal.tenant_id,
        bucket,
        policy or schemas.BucketPolicy(),
        actor=actor,
        platform_max_object_bytes=context.settings.storage.max_object_bytes,
        scanner=context.settings.storage.clamd_address is not None,
        if_match=if_match,
        if_none_match=if_none_match,
    )
    response.status_code = 201 if outcome.created else 200
    response.headers["ETag"] = etag_for(outcome.bucket.revision)
    return bucket_out(outcome.bucket)


@router.get(
    "/v1/buckets/{bucket}",
    response_model=schemas.BucketOut,
    responses={304: {"description": "Not modified (If-None-Match)"}},
)
async def get_bucket(
    bucket: BucketName,
    principal: BucketReader,
    session: DbSession,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> schemas.BucketOut | Response:
    """The bucket, its policy and usage; its ETag is its revision."""
    found = await buckets.get_bucket(session, principal.tenant_id, bucket)
    etag = etag_for(found.revision)
    if is_not_modified(if_none_match, found.revision):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return bucket_out(found)


@router.delete("/v1/buckets/{bucket}", status_code=204)
async def delete_bucket(
    bucket: BucketName,
    principal: BucketAdmin,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Response:
    """Delete an empty bucket: 409 while it holds any version or multipart upload."""
    await buckets.delete_bucket(
        session, principal.tenant_id, bucket, actor=actor, if_match=if_match
    )
    return Response(status_code=204)


@router.get("/v1/usage", response_model=schemas.TenantUsage)
async def get_usage(principal: BucketReader, session: DbSession) -> schemas.TenantUsage:
    """The tenant's storage totals and limits, and each bucket's."""
    tenant_id = principal.tenant_id
    found = await buckets.list_buckets(session, tenant_id)
    row = await quotas.tenant_quota(session, tenant_id)
    return schemas.TenantUsage(
        tenant=_usage(row.quota_bytes, row.quota_objects, row.used_bytes, row.used_objects),
        buckets=[
            schemas.BucketUsage(
                name=bucket.name,
                quota_bytes=bucket.quota_bytes,
                quota_objects=bucket.quota_objects,
                used_bytes=bucket.used_bytes,
                used_objects=bucket.used_objects,
            )
            for bucket in found
        ],
    )


@router.put("/v1/quota", response_model=schemas.Usage)
async def put_quota(
    body: schemas.TenantQuotaIn,
    principal: BucketAdmin,
    actor: CallerActor,
    session: DbSession,
) -> schemas.Usage:
    """Set the tenant's storage quota across its buckets (``null``: no limit). A quota below
    current usage is accepted: new uploads are refused until enough is deleted."""
    tenant_id = principal.tenant_id
    row = await quotas.set_tenant_quota(
        session,
        tenant_id,
        quota_bytes=body.quota_bytes,
        quota_objects=body.quota_objects,
        actor=actor,
    )
    return _usage(row.quota_bytes, row.quota_objects, row.used_bytes, row.used_objects)


def _usage(
    quota_bytes: int | None, quota_objects: int | None, used_bytes: int, used_objects: int
) -> schemas.Usage:
    return schemas.Usage(
        quota_bytes=quota_bytes,
        quota_objects=quota_objects,
        used_bytes=used_bytes,
        used_objects=used_objects,
    )

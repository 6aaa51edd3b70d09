"""Multipart uploads and presigning: start an upload, send its parts (in any order, in
parallel, again), list them to resume, complete or abort it; sign URLs and POST forms."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import Access, CallerActor, holds_access
from keel.core.audit import record_event
from keel.core.deps import Context, DbSession
from keel.core.errors import Forbidden
from keel.core.idempotency import IdempotencyKeyHeader, idempotent
from keel.storage import schemas
from keel.storage.auth import ObjectReader, ObjectWriter
from keel.storage.models import StorageUpload, StorageUploadPart
from keel.storage.service import multipart, presign
from keel.storage.service.buckets import bucket_policy, get_bucket
from keel.storage.service.objects import object_info, validate_key
from keel.storage.service.runtime import storage_runtime

router = APIRouter()


def upload_document(upload: StorageUpload, bucket: str) -> dict[str, Any]:
    return schemas.UploadOut(
        upload_id=upload.id,
        bucket=bucket,
        key=upload.key,
        created_at=upload.created_at,
        expires_at=upload.expires_at,
    ).model_dump(mode="json")


def part_out(part: StorageUploadPart) -> schemas.PartOut:
    return schemas.PartOut(
        number=part.number, etag=part.etag, size=part.size, created_at=part.created_at
    )


def principal_name(principal: Any) -> str:
    return f"{principal.principal_type}:{principal.subject}"


@router.post("/v1/buckets/{bucket}/uploads", status_code=201, response_model=schemas.UploadOut)
async def start_upload(
    bucket: str,
    body: schemas.UploadCreate,
    principal: ObjectWriter,
    actor: CallerActor,
    context: Context,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Start a multipart upload of ``key``: send its parts (1 to 10,000; each but the last at
    least 5 MiB) to ``…/parts/{number}``, then complete it. Not completed within
    ``KEEL_STORAGE__MULTIPART_EXPIRY_HOURS``, it is aborted by the lifecycle sweep."""
    tenant_id = principal.tenant_id
    key = validate_key(body.key)

    async def write(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        found = await get_bucket(session, tenant_id, bucket)
        upload = await multipart.start_upload(
            context,
            session,
            tenant_id=tenant_id,
            bucket=found,
            key=key,
            declared_type=body.content_type,
            created_by=principal_name(principal),
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.upload.start",
            actor=actor,
            target_type="storage_upload",
            target_id=upload.id,
            data={"bucket": bucket, "key": key},
        )
        return 201, upload_document(upload, bucket)

    return await idempotent(
        context.database,
        tenant_id,
        "storage.upload.start",
        idempotency_key,
        {"bucket": bucket, **body.model_dump(mode="json")},
        write,
    )


@router.put(
    "/v1/buckets/{bucket}/uploads/{upload_id}/parts/{number}",
    response_model=schemas.PartOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_part(
    bucket: str,
    upload_id: str,
    number: int,
    request: Request,
    principal: ObjectWriter,
    context: Context,
) -> schemas.PartOut:
    """Send part ``number`` (the body is its bytes, streamed). Parts may come in any order
    and in parallel; a part sent again replaces the earlier one. A part's bytes count against
    the bucket's and the tenant's byte quotas from now on (a part sent again, by the
    difference): one that does not fit is a 409 ``storage-quota-exceeded`` and is not kept.
    The answer's ``etag`` is what completion lists."""
    part = await multipart.put_part(
        context,
        tenant_id=principal.tenant_id,
        bucket_name=bucket,
        upload_id=upload_id,
        number=number,
        chunks=request.stream(),
    )
    return part_out(part)


@router.get("/v1/buckets/{bucket}/uploads/{upload_id}", response_model=schemas.UploadParts)
async def get_upload(
    bucket: str, upload_id: str, principal: ObjectWriter, session: DbSession
) -> schemas.UploadParts:
    """The upload and its parts so far: a client resuming an upload sends the others."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    upload = await multipart.get_upload(session, principal.tenant_id, found, upload_id)
    parts = await multipart.list_parts(session, upload)
    return schemas.UploadParts(
        **upload_document(upload, bucket), parts=[part_out(part) for part in parts]
    )


@router.post(
    "/v1/buckets/{bucket}/uploads/{upload_id}/complete",
    status_code=201,
    response_model=schemas.ObjectInfo,
)
async def complete_upload(
    bucket: str,
    upload_id: str,
    body: schemas.UploadComplete,
    principal: ObjectWriter,
    actor: CallerActor,
    context: Context,
) -> JSONResponse:
    """Assemble the listed parts (strictly ascending numbers, each with its ETag) into a
    version of the key: it passes the same pipeline as a single upload (size, type, quota,
    scan) and the parts are deleted. A 400 names the part that does not fit."""
    listed = [multipart.ListedPart(part.number, part.etag) for part in body.parts]
    stored = await multipart.complete_upload(
        context,
        tenant_id=principal.tenant_id,
        bucket_name=bucket,
        upload_id=upload_id,
        listed=listed,
        created_by=principal_name(principal),
        actor=actor,
    )
    return JSONResponse(object_info(bucket, stored).model_dump(mode="json"), status_code=201)


@router.delete("/v1/buckets/{bucket}/uploads/{upload_id}", status_code=204)
async def abort_upload(
    bucket: str, upload_id: str, principal: ObjectWriter, actor: CallerActor, context: Context
) -> Response:
    """Abort the upload: its parts are deleted and their bytes given back to the quotas."""
    tenant_id = principal.tenant_id
    upload = await multipart.abort_upload(
        context, tenant_id=tenant_id, bucket_name=bucket, upload_id=upload_id
    )
    async with context.database.session() as session:
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.upload.abort",
            actor=actor,
            target_type="storage_upload",
            target_id=upload_id,
            data={"bucket": bucket, "key": upload.key, "expired": False},
        )
    return Response(status_code=204)


# -- presigning --------------------------------------------------------------------------------


@router.post("/v1/buckets/{bucket}/presign", response_model=schemas.PresignOut)
async def presign_url(
    bucket: str,
    body: schemas.PresignCreate,
    request: Request,
    principal: ObjectReader,
    actor: CallerActor,
    context: Context,
    session: DbSession,
) -> schemas.PresignOut:
    """A signed URL for one GET (download) or PUT (upload) of ``key``, usable with no
    credential until it expires. GET needs ``storage:objects:read``, PUT
    ``storage:objects:write``."""
    if body.method == "PUT" and not holds_access(principal, "storage", "objects", Access.write):
        raise Forbidden("A PUT URL needs the permission 'storage:objects:write'.")
    tenant_id = principal.tenant_id
    key = validate_key(body.key)
    found = await get_bucket(session, tenant_id, bucket)
    signed = presign.presign_url(
        context.settings,
        storage_runtime(context).signing_key,
        tenant_id=tenant_id,
        bucket=bucket,
        policy=bucket_policy(found),
        method=body.method,
        key=key,
        expires_in=body.expires_in,
        base_url=str(request.base_url),
        now=time.time(),
        version_id=body.version_id,
        content_type=body.content_type,
        max_bytes=body.max_bytes,
        filename=body.filename,
    )
    # The URL and its token are credentials: the trail keeps what they allow, never them.
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.url.presign",
        actor=actor,
        target_type="storage_bucket",
        target_id=found.id,
        data={
            "bucket": bucket,
            "key": key,
            "method": body.method,
            "expires_at": signed.expires_at.isoformat(),
            "version_id": body.version_id,
        },
    )
    return schemas.PresignOut(url=signed.url, method=signed.method, expires_at=signed.expires_at)


@router.post("/v1/buckets/{bucket}/presign-post", response_model=schemas.PresignPostOut)
async def presign_post(
    bucket: str,
    body: schemas.PresignPostCreate,
    request: Request,
    principal: ObjectWriter,
    actor: CallerActor,
    context: Context,
    session: DbSession,
) -> schemas.PresignPostOut:
    """A presigned POST form for browsers: the URL and the fields to send (``key``,
    ``policy``, ``signature``), then ``Content-Type`` if wanted and the ``file`` part last.
    The policy fixes the key (or its prefix), the content types, the size range and the
    expiry; the form's answer is 201 with the stored version's info."""
    tenant_id = principal.tenant_id
    if body.key is not None:
        validate_key(body.key.replace("${filename}", "f"))
    if body.key_prefix:
        validate_key(body.key_prefix + "f")
    found = await get_bucket(session, tenant_id, bucket)
    signed = presign.presign_post(
        context.settings,
        storage_runtime(context).signing_key,
        tenant_id=tenant_id,
        bucket=bucket,
        policy=bucket_policy(found),
        key=body.key,
        key_prefix=body.key_prefix,
        content_types=tuple(body.content_types),
        min_bytes=body.min_bytes,
        max_bytes=body.max_bytes,
        expires_in=body.expires_in,
        base_url=str(request.base_url),
        now=time.time(),
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.url.presign",
        actor=actor,
        target_type="storage_bucket",
        target_id=found.id,
        data={
            "bucket": bucket,
            "method": "POST",
            "key": body.key,
            "key_prefix": body.key_prefix,
            "content_types": body.content_types,
            "max_bytes": body.max_bytes,
            "expires_at": signed.expires_at.isoformat(),
        },
    )
    return schemas.PresignPostOut(
        url=signed.url, fields=signed.fields, expires_at=signed.expires_at
    )

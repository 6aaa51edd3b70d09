"""Objects: streamed uploads (``PUT``), downloads (``GET``/``HEAD`` with ``Range``, ``ETag``
and ``If-None-Match``), deletes under locks, listing, object info, retention and legal holds.

Downloads serve the newest ``clean`` version of a key (or ``?version_id=``): a version still
being checked is 409 ``object-not-ready`` with ``Retry-After``; an infected or rejected one
is 403 ``object-quarantined`` for everyone, admins included. The bytes stream at constant
memory, decrypted segment by segment. A ``Range`` of one span is answered 206; several spans
are answered 200 with the whole object (allowed by RFC 9110 §14.2: a server may ignore
``Range``); a span past the end is 416.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import ClientDisconnect

from keel.auth.dependencies import Access, CallerActor, holds_access
from keel.core.audit import Actor, record_event
from keel.core.deps import Context, DbSession
from keel.core.errors import (
    BadRequest,
    InternalError,
    KeelError,
    NotFound,
    ServiceUnavailable,
)
from keel.core.http import etag_for, is_not_modified
from keel.core.lazy import lazy_module
from keel.core.logging import get_logger
from keel.storage import schemas
from keel.storage.auth import ObjectAdmin, ObjectReader, ObjectWriter
from keel.storage.backends import BackendUnavailable, BlobNotFound
from keel.storage.metrics import storage_metrics
from keel.storage.models import StorageObject
from keel.storage.service import blobio, objects
from keel.storage.service.buckets import bucket_policy, get_bucket
from keel.storage.service.ingest import ingest
from keel.storage.sniffing import is_active_content
from keel_client.auth import Principal

log = get_logger(__name__)

router = APIRouter(tags=["storage"])

BucketName = Annotated[str, Path(min_length=1, max_length=255)]
#: Longer than any valid key, so that an overlong one is told why (400) by the service.
ObjectKey = Annotated[str, Path(min_length=0, max_length=16 * 1024)]
VersionId = Annotated[str | None, Query(min_length=1, max_length=36)]
BypassGovernance = Annotated[str | None, Header(alias="X-Keel-Bypass-Governance", max_length=16)]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=1024)]
RangeHeader = Annotated[str | None, Header(alias="Range", max_length=1024)]

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")

if TYPE_CHECKING:
    from keel.storage import encryption
else:  # Tink on first use: a tenth of a second of every start otherwise
    encryption = lazy_module("keel.storage.encryption")


# --- pure HTTP rules ------------------------------------------------------------------------


class RangeNotSatisfiable(KeelError):
    status, slug, title = 416, "http-error", "Range not satisfiable"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a ``Range`` header asks of a ``size``-byte body, ``None`` for the
    whole body (no header, another unit, several spans, or a malformed one: RFC 9110 lets
    a server ignore those), or ``RangeNotSatisfiable`` when the one span misses the body."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.match(spec)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # "5-3": not a valid range, ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        "The range starts past the end of the object.",
        headers={"Content-Range": f"bytes */{size}"},
    )


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` (RFC 6266: an ASCII fallback and the UTF-8 form)."""
    fallback = "".join(
        character if 0x20 <= ord(character) < 0x7F and character not in '"\\/;' else "_"
        for character in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_headers(
    version: StorageObject, *, is_public: bool, download: str | None
) -> dict[str, str]:
    """The headers of a version's download (whole or ranged alike)."""
    headers = {
        "ETag": etag_for(version.etag),
        "Accept-Ranges": "bytes",
        "Content-Type": version.content_type,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "public, max-age=300" if is_public else "private, max-age=0",
        "X-Keel-Version-Id": version.id,
    }
    if version.clean_at is not None:
        headers["Last-Modified"] = version.clean_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    filename = download
    if filename is None and is_active_content(version.content_type):
        # Active content (HTML, SVG) is never rendered inline in Keel's origin.
        filename = version.key.rsplit("/", 1)[-1] or "download"
    if filename is not None:
        headers["Content-Disposition"] = content_disposition(filename)
    return headers


def created_by(principal: Principal) -> str:
    return f"{principal.principal_type}:{principal.subject}"


def may_bypass_governance(principal: Principal, header: str | None) -> bool:
    return (header or "").strip().lower() == "true" and holds_access(
        principal, "storage", "objects", Access.admin
    )


# --- uploads --------------------------------------------------------------------------------


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequest("The client went away before the whole body arrived.") from None


@router.put(
    "/v1/buckets/{bucket}/objects/{key:path}",
    status_code=201,
    response_model=schemas.ObjectInfo,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "required": True,
        }
    },
)
async def put_object(
    bucket: BucketName,
    key: ObjectKey,
    request: Request,
    response: Response,
    principal: ObjectWriter,
    actor: CallerActor,
    context: Context,
    session: DbSession,
    if_none_match: IfNoneMatch = None,
) -> schemas.ObjectInfo:
    """Store the body as a new version of ``key``, streamed at constant memory. The type is
    decided from the bytes (415 when the bucket does not accept it), the size checked as
    the bytes arrive (413), the quota when they are stored (409). The version is readable
    once its scan passes (``state`` ``pending`` until then, in a bucket that scans).
    ``If-None-Match: *``: 412 when the key has a version already."""
    objects.validate_key(key)
    if if_none_match is not None and if_none_match.strip() != "*":
        raise BadRequest("If-None-Match on an upload takes only '*'.")
    found = await get_bucket(session, principal.tenant_id, bucket)
    # The request's unit of work ends here: it must not hold a connection while the body
    # streams in (the version's own transaction comes after).
    await session.commit()
    version = await ingest(
        context,
        tenant_id=principal.tenant_id,
        bucket=found,
        key=key,
        chunks=_body(request),
        declared_type=request.headers.get("content-type"),
        created_by=created_by(principal),
        actor=actor,
        if_absent=if_none_match is not None,
    )
    response.headers["ETag"] = etag_for(version.etag)
    return objects.object_info(found.name, version)


# --- downloads ------------------------------------------------------------------------------


async def _first_then_rest(body: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``body`` with its first chunk read now: a missing or tampered blob is a problem
    response, not a broken stream."""
    try:
        first = await anext(body, b"")
    except BlobNotFound:
        raise ServiceUnavailable("The object's bytes are missing from the store.") from None
    except BackendUnavailable:
        raise ServiceUnavailable("The blob store did not answer.") from None
    except encryption.DecryptionFailed:
        log.error("storage.decryption_failed")
        raise InternalError("The object's bytes did not authenticate.") from None

    async def chained() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(body):
            if first:
                yield first
            try:
                async for chunk in body:
                    yield chunk
            except (BlobNotFound, BackendUnavailable, encryption.DecryptionFailed):
                # Headers are out: the only thing left is to break the response off.
                log.error("storage.download_broken", exc_info=True)
                raise

    return chained()


async def serve_download(
    context: Context,
    session: AsyncSession,
    *,
    tenant_id: str,
    bucket: str,
    key: str,
    version_id: str | None,
    method: str,
    download: str | None,
    range_header: str | None,
    if_none_match: str | None,
    actor: Actor,
    via: Literal["api", "signed"],
) -> Response:
    """A readable version's download, whoever asked (a credential or a signed URL): the
    headers, ``If-None-Match`` (304), one ``Range`` span (206), HEAD without the bytes; the
    download audited in ``session`` before a byte goes out."""
    found = await get_bucket(session, tenant_id, bucket)
    version = await objects.readable_version(session, found, key, version_id)
    headers = download_headers(
        version, is_public=bucket_policy(found).visibility == "public", download=download
    )
    if is_not_modified(if_none_match, version.etag):
        return Response(status_code=304, headers=headers)
    span = parse_range(range_header, version.size)
    start, end = span if span is not None else (0, version.size)
    headers["Content-Length"] = str(end - start)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{version.size}"
    if method == "HEAD":
        return Response(status_code=status, headers=headers)
    data: dict[str, Any] = {
        "bucket": found.name,
        "key": version.key,
        "version_id": version.id,
        "start": start,
        "end": end,
    }
    if via == "signed":
        data["signed_url"] = True
    record_event(
        session,
        tenant_id=tenant_id,
        action="storage.object.download",
        actor=actor,
        target_type="storage_object",
        target_id=version.id,
        data=data,
    )
    body = await _first_then_rest(blobio.read_version(context, version, start, end))
    storage_metrics(context).downloaded(via, end - start)
    return StreamingResponse(body, status_code=status, headers=headers)


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The object's bytes."},
    206: {"description": "The requested range."},
    304: {"description": "Not modified."},
    416: {"description": "Range not satisfiable."},
}


@router.get(
    "/v1/buckets/{bucket}/objects/{key:path}",
    response_class=StreamingResponse,
    responses=_DOWNLOAD_RESPONSES,
)
async def get_object(
    bucket: BucketName,
    key: ObjectKey,
    principal: ObjectReader,
    actor: CallerActor,
    context: Context,
    session: DbSession,
    version_id: VersionId = None,
    download: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Download the newest clean version of ``key`` (or ``version_id``): ``Range`` (one
    span: 206; several: the whole object), ``If-None-Match`` (304), ``?download=<name>``
    (``Content-Disposition: attachment``). Still being checked: 409 ``object-not-ready``;
    infected or rejected: 403 ``object-quarantined``; a delete marker: 404."""
    return await serve_download(
        context,
        session,
        tenant_id=principal.tenant_id,
        bucket=bucket,
        key=key,
        version_id=version_id,
        method="GET",
        download=download,
        range_header=range_header,
        if_none_match=if_none_match,
        actor=actor,
        via="api",
    )


@router.head("/v1/buckets/{bucket}/objects/{key:path}", responses=_DOWNLOAD_RESPONSES)
async def head_object(
    bucket: BucketName,
    key: ObjectKey,
    principal: ObjectReader,
    actor: CallerActor,
    context: Context,
    session: DbSession,
    version_id: VersionId = None,
    download: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The headers of ``GET`` (size, type, ETag, version), without the bytes."""
    return await serve_download(
        context,
        session,
        tenant_id=principal.tenant_id,
        bucket=bucket,
        key=key,
        version_id=version_id,
        method="HEAD",
        download=download,
        range_header=range_header,
        if_none_match=if_none_match,
        actor=actor,
        via="api",
    )


# --- deletes --------------------------------------------------------------------------------


@router.delete("/v1/buckets/{bucket}/objects/{key:path}", status_code=204)
async def delete_object(
    bucket: BucketName,
    key: ObjectKey,
    principal: ObjectWriter,
    actor: CallerActor,
    context: Context,
    session: DbSession,
    version_id: VersionId = None,
    bypass: BypassGovernance = None,
) -> Response:
    """Delete ``key``: a versioned bucket adds a delete marker (``?version_id=`` deletes
    that version for good); a non-versioned one deletes every version. A compliance lock or
    a legal hold refuses everyone (409); a governance lock yields only to
    ``storage:objects:admin`` with ``X-Keel-Bypass-Governance: true``."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    deleted = await objects.delete_object(
        session,
        principal.tenant_id,
        found,
        key,
        version_id=version_id,
        bypass_governance=may_bypass_governance(principal, bypass),
        actor=actor,
        created_by=created_by(principal),
    )
    await session.commit()
    await blobio.delete_blobs(context, deleted.locators)
    headers = {}
    if deleted.marker is not None:
        headers["X-Keel-Delete-Marker"] = deleted.marker.id
    return Response(status_code=204, headers=headers)


# --- listing and info -----------------------------------------------------------------------


@router.get("/v1/buckets/{bucket}/objects", response_model=schemas.ObjectList)
async def list_objects(
    bucket: BucketName,
    principal: ObjectReader,
    session: DbSession,
    prefix: Annotated[str, Query(max_length=1024)] = "",
    cursor: Annotated[str | None, Query(min_length=1, max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=objects.MAX_LIST_LIMIT)] = 100,
) -> schemas.ObjectList:
    """The newest version of each key under ``prefix`` that is not a delete marker, in key
    order, with its state (pending, clean, infected, rejected); ``next_cursor`` pages on."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    after = objects.decode_cursor(cursor) if cursor is not None else None
    rows, next_cursor = await objects.list_objects(
        session, found, prefix=prefix, after=after, limit=limit
    )
    return schemas.ObjectList(
        objects=[objects.object_info(found.name, row) for row in rows], next_cursor=next_cursor
    )


@router.get("/v1/buckets/{bucket}/info/{key:path}", response_model=schemas.ObjectDetails)
async def object_info(
    bucket: BucketName,
    key: ObjectKey,
    principal: ObjectReader,
    session: DbSession,
    versions: bool = False,
) -> schemas.ObjectDetails:
    """The key's newest version: its state and, when infected or rejected, why. With
    ``?versions=true`` every version too, newest first (delete markers included)."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    objects.validate_key(key)
    every = await objects.key_versions(session, found.id, key)
    if not every or (every[0].is_delete_marker and not versions):
        raise NotFound("No such object.")
    details = schemas.ObjectDetails(**objects.object_info(found.name, every[0]).model_dump())
    if versions:
        details.versions = [objects.object_info(found.name, version) for version in every]
    return details


# --- retention and legal hold ---------------------------------------------------------------


@router.put("/v1/buckets/{bucket}/retention/{key:path}", response_model=schemas.ObjectInfo)
async def put_retention(
    bucket: BucketName,
    key: ObjectKey,
    body: schemas.RetentionIn,
    principal: ObjectWriter,
    actor: CallerActor,
    session: DbSession,
    bypass: BypassGovernance = None,
) -> schemas.ObjectInfo:
    """Lock a version (default: the key's newest) until ``retain_until``. A compliance lock
    is only ever extended, by anyone; shortening a governance lock needs
    ``storage:objects:admin`` and ``X-Keel-Bypass-Governance: true``."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    version = await objects.set_retention(
        session,
        principal.tenant_id,
        found,
        key,
        mode=body.mode,
        retain_until=body.retain_until,
        version_id=body.version_id,
        bypass_governance=may_bypass_governance(principal, bypass),
        actor=actor,
    )
    return objects.object_info(found.name, version)


@router.put("/v1/buckets/{bucket}/legal-hold/{key:path}", response_model=schemas.ObjectInfo)
async def put_legal_hold(
    bucket: BucketName,
    key: ObjectKey,
    body: schemas.LegalHoldIn,
    principal: ObjectAdmin,
    actor: CallerActor,
    session: DbSession,
) -> schemas.ObjectInfo:
    """Set or lift a version's legal hold (default: the key's newest version): while on,
    nobody can delete the version."""
    found = await get_bucket(session, principal.tenant_id, bucket)
    version = await objects.set_legal_hold(
        session,
        principal.tenant_id,
        found,
        key,
        on=body.on,
        version_id=body.version_id,
        actor=actor,
    )
    return objects.object_info(found.name, version)

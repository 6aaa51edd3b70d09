"""The credential-less routes: signed URLs (``GET|HEAD|PUT /v1/signed/{token}``) and presigned
POST forms (``POST /v1/forms/{tenant_id}/{bucket}``). The signature is the credential.

A token or a form's policy is verified with the key held in memory BEFORE anything touches the
database: an expired, tampered or malformed one, or one used with another method than it was
signed for, is a 403 problem whose ``reason`` says which (``expired``, ``tampered``,
``malformed``, ``method``), and costs no query. Only then does the request run as its
authenticated twin does: a download with ``Range`` and ``ETag`` (quarantined and pending
versions refused alike), or an upload through the whole ingest pipeline with the limits the
token or policy sets (its content type, its largest size) on top of the bucket's.

A POST form's answer is **201** with the stored version's info (JSON). S3's
``success_action_status`` / ``success_action_redirect`` are not supported: a field the policy
does not cover is refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from keel.auth.dependencies import request_actor
from keel.core.audit import Actor
from keel.core.deps import Context
from keel.core.errors import BadRequest, Forbidden, PayloadTooLarge
from keel.core.tenancy import bind_tenant
from keel.storage import schemas
from keel.storage.forms import form_boundary, read_post_form
from keel.storage.metrics import storage_metrics
from keel.storage.router.objects import IfNoneMatch, RangeHeader, serve_download
from keel.storage.service.ingest import ingest
from keel.storage.service.objects import object_info, validate_key
from keel.storage.service.runtime import storage_runtime
from keel.storage.signing import (
    PolicyConditionFailed,
    SignatureInvalid,
    UrlClaims,
    form_key,
    verify_post_policy,
    verify_url_token,
)

router = APIRouter()

#: Who an upload through a signed URL or form is recorded as created by.
SIGNED_URL_CREATOR = "signed_url:anonymous"
POST_FORM_CREATOR = "post_form:anonymous"

_OCTETS = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    }
}


class WrongMethod(Forbidden):
    """A valid token used with another method than the one it was signed for."""

    def __init__(self) -> None:
        super().__init__("The signed URL is not for this method.", reason="method")


def verified_claims(context: Context, token: str, method: Literal["GET", "PUT"]) -> UrlClaims:
    """The token's claims for ``method``, checked with the in-memory key only (no query)."""
    try:
        claims = verify_url_token(storage_runtime(context).signing_key, token, now=time.time())
        if claims.method != method:
            raise WrongMethod()
    except Forbidden:
        storage_metrics(context).refused("signature")
        raise
    return claims


def signed_actor(request: Request, kind: str) -> Actor:
    """The audit actor of a credential-less request: the kind of signature, the address."""
    caller = request_actor(request)
    return Actor(kind, None, caller.ip_address, caller.user_agent)


def _same_media_type(declared: str | None, wanted: str) -> bool:
    if declared is None:
        return False
    return declared.partition(";")[0].strip().lower() == wanted.partition(";")[0].strip().lower()


def _check_declared_length(request: Request, limit: int | None) -> None:
    # A body announced larger than the limit is refused before a byte of it is read.
    length = request.headers.get("content-length")
    if limit is not None and length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            f"The object is larger than the {limit} bytes allowed.",
            code="object-too-large",
            max_bytes=limit,
        )


@router.put(
    "/v1/signed/{token}",
    status_code=201,
    response_model=schemas.ObjectInfo,
    openapi_extra=_OCTETS,
)
async def signed_upload(token: str, request: Request, context: Context) -> JSONResponse:
    """Upload through a signed PUT URL (no credential): the body is the object's bytes. The
    URL's content type, if it set one, must be the request's ``Content-Type`` and the bytes'
    type; its ``max_bytes`` and the bucket's limits apply."""
    claims = verified_claims(context, token, "PUT")
    declared = request.headers.get("content-type")
    if claims.content_type is not None and not _same_media_type(declared, claims.content_type):
        storage_metrics(context).refused("policy")
        raise Forbidden("The signed URL allows only its own Content-Type.", reason="content-type")
    _check_declared_length(request, claims.max_bytes)
    stored = await ingest(
        context,
        tenant_id=claims.tenant_id,
        bucket=claims.bucket,
        key=validate_key(claims.key),
        chunks=request.stream(),
        declared_type=claims.content_type or declared,
        created_by=SIGNED_URL_CREATOR,
        max_bytes=claims.max_bytes,
        allowed_types=[claims.content_type] if claims.content_type is not None else None,
        actor=signed_actor(request, "signed_url"),
        via="signed",
    )
    return JSONResponse(object_info(claims.bucket, stored).model_dump(mode="json"), status_code=201)


async def _at_least(minimum: int, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, then a 400 if they came to fewer than ``minimum`` bytes (the policy's
    content-length-range; its maximum is the ingest's own size limit, a 413)."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        yield chunk
    if total < minimum:
        raise BadRequest(
            f"The file is smaller than the {minimum} bytes the form requires.",
            code="object-too-small",
            min_bytes=minimum,
        )


@router.post(
    "/v1/forms/{tenant_id}/{bucket}",
    status_code=201,
    response_model=schemas.ObjectInfo,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {"type": "object"}}},
        }
    },
)
async def post_form(
    tenant_id: str, bucket: str, request: Request, context: Context
) -> JSONResponse:
    """A browser's upload through a presigned POST form (no credential): multipart/form-data
    with ``key``, ``policy``, ``signature``, optionally ``Content-Type``, then ``file`` last.
    The policy is checked before a byte of the file is read; the file then streams through
    the ingest pipeline within the policy's size range and content types."""
    form = await read_post_form(
        form_boundary(request.headers.get("content-type")), request.stream()
    )
    metrics = storage_metrics(context)
    try:
        policy = verify_post_policy(
            storage_runtime(context).signing_key,
            form.fields,
            tenant_id=tenant_id,
            bucket=bucket,
            filename=form.file.filename,
            now=time.time(),
            file_content_type=form.file.content_type,
        )
    except SignatureInvalid:
        metrics.refused("signature")
        raise
    except PolicyConditionFailed:
        metrics.refused("policy")
        raise
    key = validate_key(form_key(form.fields, form.file.filename))
    declared = {name.lower(): value for name, value in form.fields.items()}.get(
        "content-type", form.file.content_type
    )
    stored = await ingest(
        context,
        tenant_id=tenant_id,
        bucket=bucket,
        key=key,
        chunks=_at_least(policy.min_bytes, form.file.chunks),
        declared_type=declared,
        created_by=POST_FORM_CREATOR,
        max_bytes=policy.max_bytes,
        allowed_types=list(policy.content_types),
        actor=signed_actor(request, "post_form"),
        via="form",
    )
    return JSONResponse(object_info(bucket, stored).model_dump(mode="json"), status_code=201)


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The object's bytes."},
    206: {"description": "The requested range."},
    304: {"description": "Not modified."},
    416: {"description": "Range not satisfiable."},
}


async def _signed_download(
    method: Literal["GET", "HEAD"],
    token: str,
    request: Request,
    context: Context,
    range_header: str | None,
    if_none_match: str | None,
) -> Response:
    claims = verified_claims(context, token, "GET")
    async with context.database.session() as session:
        bind_tenant(session, claims.tenant_id)
        return await serve_download(
            context,
            session,
            tenant_id=claims.tenant_id,
            bucket=claims.bucket,
            key=claims.key,
            version_id=claims.version_id,
            method=method,
            download=claims.disposition,
            range_header=range_header,
            if_none_match=if_none_match,
            actor=signed_actor(request, "signed_url"),
            via="signed",
        )


@router.get("/v1/signed/{token}", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES)
async def signed_download(
    token: str,
    request: Request,
    context: Context,
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Download through a signed GET URL (no credential), as the authenticated download:
    ``Range``, ``ETag`` / ``If-None-Match``, the URL's attachment file name; a version being
    checked is 409, a quarantined one 403."""
    return await _signed_download("GET", token, request, context, range_header, if_none_match)


@router.head("/v1/signed/{token}", responses=_DOWNLOAD_RESPONSES)
async def signed_head(
    token: str,
    request: Request,
    context: Context,
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The headers of the signed GET, without the bytes."""
    return await _signed_download("HEAD", token, request, context, range_header, if_none_match)

"""Errors raised by ``keel_client.storage``.

One base, itself a ``keel_client.http.KeelHTTPError``, so ``except KeelHTTPError`` still
catches everything a Keel client raises::

    KeelHTTPError                       .status .code .request_id (see keel_client.http)
    └── StorageError                    .bucket .key: what the call was about
        ├── ObjectNotFound              404: no such bucket, key or version (LookupError)
        ├── StoragePermissionDenied     403: the token lacks storage:<scope>:<level>
        ├── ObjectQuarantined           403 object-quarantined, or wait_until_clean saw
        │                               infected/rejected: .state .reason (never served)
        ├── ObjectNotReady              409 object-not-ready (.retry_after), or
        │                               wait_until_clean timed out while still pending
        ├── ObjectTooLarge              413: over the bucket's max_object_bytes (or the URL's)
        ├── ContentTypeRefused          415: the bytes are of a type the bucket forbids
        ├── QuotaExceeded               409 quota-exceeded: the bucket's or tenant's quota
        ├── StorageConflict             another 409 (a lock, a legal hold, If-None-Match)
        ├── RevisionMismatch            412: ``if_match`` is not the bucket's revision
        ├── InvalidStorageRequest       400/422: a bad key, part list or policy
        └── UploadInterrupted           a multipart upload stopped on a transient failure:
                                        .upload_id, for resume_upload (the cause chained)

Transport failures, timeouts, an open breaker and 5xx answers stay the base client's errors
(``TransportError``, ``RequestTimeout``, ``CircuitOpenError``, ``ServerError``), except
during a multipart upload, where they become ``UploadInterrupted``.
"""

from __future__ import annotations

from typing import Any

from keel_client.http import ClientError, KeelHTTPError

__all__ = [
    "ContentTypeRefused",
    "InvalidStorageRequest",
    "ObjectNotFound",
    "ObjectNotReady",
    "ObjectQuarantined",
    "ObjectTooLarge",
    "QuotaExceeded",
    "RevisionMismatch",
    "StorageConflict",
    "StorageError",
    "StoragePermissionDenied",
    "UploadInterrupted",
    "storage_error",
]


class StorageError(KeelHTTPError):
    """Base of the storage SDK's errors; ``bucket`` and ``key`` name what the call was about.

    Example::

        try:
            data = await keel.storage.download("invoices", "2026/42.pdf")
        except StorageError as error:
            log.error("download failed", bucket=error.bucket, key=error.key, code=error.code)
    """

    default_code = "storage_error"

    def __init__(
        self, message: str, *, bucket: str | None = None, key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.bucket = bucket
        self.key = key


class ObjectNotFound(StorageError, LookupError):
    """404: the bucket, the key (or its newest version is a delete marker) or the version
    does not exist — or is another tenant's."""

    default_code = "object_not_found"


class StoragePermissionDenied(StorageError):
    """403: the token lacks the ``storage:buckets|objects:read|write|admin`` permission."""

    default_code = "storage_permission_denied"


class ObjectQuarantined(StorageError):
    """The version is ``infected`` (``reason``: the signature) or ``rejected`` (``reason``:
    why, e.g. the scan failed): it is never served, to anyone.

    Example::

        try:
            await keel.storage.wait_until_clean("uploads", key, timeout=60)
        except ObjectQuarantined as error:
            notify_user(f"your file was refused: {error.reason}")
    """

    default_code = "object_quarantined"

    def __init__(
        self, message: str, *, state: str | None = None, reason: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.state = state
        self.reason = reason


class ObjectNotReady(StorageError):
    """The version is still ``pending`` (being scanned); ``retry_after`` seconds is Keel's
    hint when it answered 409."""

    default_code = "object_not_ready"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ObjectTooLarge(StorageError):
    """413: the body is over the bucket's ``max_object_bytes``, or the presigned URL's."""

    default_code = "object_too_large"


class ContentTypeRefused(StorageError):
    """415: the bytes are of a media type the bucket does not allow (decided from the bytes,
    whatever the name or the declared ``Content-Type``)."""

    default_code = "content_type_refused"


class QuotaExceeded(StorageError):
    """The bucket's or the tenant's quota (bytes or objects) has no room for the object."""

    default_code = "quota_exceeded"


class StorageConflict(StorageError):
    """Another 409: a lock or legal hold refuses the change, an ``If-None-Match: *``
    upload found the key taken, a bucket to delete is not empty."""

    default_code = "storage_conflict"


class RevisionMismatch(StorageError):
    """412: the bucket changed since the revision given as ``if_match``: read it again."""

    default_code = "revision_mismatch"


class InvalidStorageRequest(StorageError):
    """400 or 422: a bad key (``..``, NUL, over 1,024 bytes), bucket name, policy or part
    list."""

    default_code = "invalid_storage_request"


class UploadInterrupted(StorageError):
    """A multipart upload stopped on a failure that may pass (Keel unreachable, a 5xx, a
    timeout); the parts already sent stay with Keel until the upload expires.

    Example::

        try:
            info = await keel.storage.upload("videos", "talk.mp4", path)
        except UploadInterrupted as error:
            info = await keel.storage.resume_upload("videos", error.upload_id, path)
    """

    default_code = "upload_interrupted"

    def __init__(self, message: str, *, upload_id: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.upload_id = upload_id


def _slug(problem_type: str | None) -> str:
    """``urn:keel:problem:object-quarantined`` → ``object-quarantined``."""
    if not problem_type:
        return ""
    return problem_type.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


def storage_error(error: ClientError, *, bucket: str | None, key: str | None) -> StorageError:
    """The storage error for a 4xx answer (pure: status and problem type decide)."""
    # Keel names a storage refusal by its problem type (``storage-quota-exceeded``) or, on
    # a generic type (``conflict``, ``forbidden``), by the problem's ``code``.
    slug = f"{_slug(error.problem_type)} {error.code or ''}"
    problem = error.problem
    extensions = problem.extensions if problem is not None else {}
    fields: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "status": error.status,
        "problem_type": error.problem_type,
        "code": error.code if error.code != ClientError.default_code else None,
        "request_id": error.request_id,
        "title": error.title,
        "detail": error.detail,
        "method": error.method,
        "url": error.url,
    }
    where = f"{bucket}/{key}" if key is not None else (bucket or "storage")
    message = f"{where}: {error.detail or error.title or error.status}"
    status = error.status
    if status == 404:
        return ObjectNotFound(message, **fields)
    if "quarantined" in slug:
        reason = extensions.get("reason")
        state = extensions.get("state")
        return ObjectQuarantined(
            message,
            state=None if state is None else str(state),
            reason=None if reason is None else str(reason),
            **fields,
        )
    if "not-ready" in slug:
        retry_after = error.response.headers.get("retry-after", "")
        return ObjectNotReady(
            message, retry_after=float(retry_after) if retry_after.isdigit() else None, **fields
        )
    if "quota" in slug:
        return QuotaExceeded(message, **fields)
    if status == 403:
        return StoragePermissionDenied(message, **fields)
    if status == 413:
        return ObjectTooLarge(message, **fields)
    if status == 415:
        return ContentTypeRefused(message, **fields)
    if status == 412:
        return RevisionMismatch(message, **fields)
    if status == 409:
        return StorageConflict(message, **fields)
    if status in (400, 422):
        return InvalidStorageRequest(message, **fields)
    return StorageError(message, **fields)

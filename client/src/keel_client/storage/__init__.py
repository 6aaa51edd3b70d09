"""Keel's object storage from a service: buckets, streamed uploads and downloads, presigned
URLs and forms, and the jobs hook run when an upload is clean, ``keel_client.storage``.

Upload, wait for the scan, download (every byte passes Keel: sized, typed from its magic
bytes, scanned by clamd, encrypted at rest)::

    from keel_client import Keel

    async with Keel.from_env() as keel:
        info = await keel.storage.upload("invoices", "2026/42.pdf", "/tmp/42.pdf",
                                         progress=lambda sent, total: print(sent, total))
        await keel.storage.wait_until_clean("invoices", info.key, version_id=info.version_id)
        await keel.storage.download("invoices", "2026/42.pdf", "/tmp/copy.pdf")

Process every clean upload in a ``keel_client.jobs`` worker (the bucket's ``on_clean``)::

    @worker.task("uploads.process")
    @clean_object
    async def process(obj: CleanObject) -> None: ...

Private modules by concept, behind this curated list: ``_models`` (what the endpoints
answer, what a caller builds), ``_exceptions`` (the error tree), ``_policy`` (pure
decisions: paths, ranges, part plans, polling), ``_sources`` (what an upload reads),
``_transfer`` (streamed calls through the shared client), ``_hooks`` (``clean_object``),
``_client`` (``StorageClient``) and ``_sync_client`` (``SyncStorageClient``). See
``docs/client/storage.md``.
"""

from __future__ import annotations

from keel_client.storage._client import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    MULTIPART_THRESHOLD,
    StorageClient,
)
from keel_client.storage._exceptions import (
    ContentTypeRefused,
    InvalidStorageRequest,
    ObjectNotFound,
    ObjectNotReady,
    ObjectQuarantined,
    ObjectTooLarge,
    QuotaExceeded,
    RevisionMismatch,
    StorageConflict,
    StorageError,
    StoragePermissionDenied,
    UploadInterrupted,
)
from keel_client.storage._hooks import clean_object
from keel_client.storage._models import (
    Bucket,
    BucketPolicy,
    CleanHook,
    CleanObject,
    LockRule,
    ObjectHead,
    ObjectInfo,
    ObjectPage,
    ObjectState,
    PresignedPost,
    PresignedURL,
    RetentionRule,
    Upload,
    UploadPart,
)
from keel_client.storage._sources import UploadSource
from keel_client.storage._streams import ObjectStream, Progress
from keel_client.storage._sync_client import SyncStorageClient

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "Bucket",
    "BucketPolicy",
    "CleanHook",
    "CleanObject",
    "ContentTypeRefused",
    "InvalidStorageRequest",
    "LockRule",
    "ObjectHead",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectNotReady",
    "ObjectPage",
    "ObjectQuarantined",
    "ObjectState",
    "ObjectStream",
    "ObjectTooLarge",
    "PresignedPost",
    "PresignedURL",
    "Progress",
    "QuotaExceeded",
    "RetentionRule",
    "RevisionMismatch",
    "StorageClient",
    "StorageConflict",
    "StorageError",
    "StoragePermissionDenied",
    "SyncStorageClient",
    "Upload",
    "UploadInterrupted",
    "UploadPart",
    "UploadSource",
    "clean_object",
]

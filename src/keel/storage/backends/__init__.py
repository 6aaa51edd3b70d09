"""Blob stores of the storage service: where an object's bytes are kept, on the local disk
(the embedded default) or in one bucket of any S3-compatible store.

The service opens the configured store once per process with :func:`open_blob_store` and
closes it at shutdown::

    store = open_blob_store(settings.storage, settings.data_dir)
    written = await store.write(locator, chunks)      # atomic, constant memory
    async with contextlib.aclosing(store.list_blobs(prefix)) as listing:
        async for blob in listing: ...                  # a page at a time
    async with contextlib.aclosing(store.read(locator, start, end)) as body:
        async for chunk in body: ...
    await store.aclose()

Errors: :class:`BlobNotFound`, :class:`BackendUnavailable` (the API answers 503), and
:class:`ValueError` for an unsafe locator (see :func:`locator_segments`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.storage.backends.base import (
    CHUNK_BYTES,
    BackendUnavailable,
    BlobNotFound,
    BlobStore,
    ListedBlob,
    locator_segments,
)
from keel.storage.backends.local import LocalBlobStore

if TYPE_CHECKING:
    from keel.settings import StorageSettings
    from keel.storage.backends.s3 import PART_BYTES, S3BlobStore


def __getattr__(name: str) -> Any:
    # The S3 store is imported on first use: aiobotocore is a third of a second of every
    # start, and the embedded default never needs it.
    if name in ("PART_BYTES", "S3BlobStore"):
        from keel.storage.backends import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHUNK_BYTES",
    "PART_BYTES",
    "BackendUnavailable",
    "BlobNotFound",
    "BlobStore",
    "ListedBlob",
    "LocalBlobStore",
    "S3BlobStore",
    "locator_segments",
    "open_blob_store",
]


def open_blob_store(settings: StorageSettings, data_dir: Path) -> BlobStore:
    """The store ``settings`` configure: ``backend="local"`` keeps blobs under
    ``local_path`` (default ``<data_dir>/storage``), ``backend="s3"`` in the bucket of
    ``settings.s3``. Nothing is contacted until the first call."""
    if settings.backend == "local":
        return LocalBlobStore(settings.local_root(data_dir))
    from keel.storage.backends.s3 import S3BlobStore

    s3 = settings.s3
    if not s3.bucket:
        raise ValueError("the S3 storage backend needs a bucket (KEEL_STORAGE__S3__BUCKET)")
    return S3BlobStore(
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        bucket=s3.bucket,
        prefix=s3.prefix,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        addressing_style=s3.addressing_style,
        connect_timeout=s3.connect_timeout_seconds,
        read_timeout=s3.read_timeout_seconds,
    )

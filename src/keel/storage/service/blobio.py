"""A version's bytes over the blob store: encrypting writes, and reads that decrypt only the
segments a range touches.

The store itself knows nothing of encryption (``keel.storage.backends``); this module is
the one place that turns a version row (its locator, size and sealed data key) into
plaintext, so the downloads, the scanner and multipart completion read alike.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import TYPE_CHECKING

from keel.core.context import AppContext
from keel.core.lazy import lazy_module
from keel.core.logging import get_logger
from keel.storage.models import StorageObject, object_associated_data
from keel.storage.service.runtime import storage_runtime

log = get_logger(__name__)

if TYPE_CHECKING:
    from keel.storage import encryption
else:  # Tink on first use: a tenth of a second of every start otherwise
    encryption = lazy_module("keel.storage.encryption")


def version_locator(tenant_id: str, bucket_id: str, version_id: str) -> str:
    """Where a version's bytes live: ``<tenant>/<bucket id>/<version id>``."""
    return f"{tenant_id}/{bucket_id}/{version_id}"


def new_sealed_data_key(context: AppContext, version_id: str) -> tuple[bytes, bytes]:
    """A fresh data key for a version, and the same key sealed by the master key (what the
    row keeps)."""
    data_key = encryption.new_data_key()
    return data_key, context.keyring.seal(data_key, object_associated_data(version_id))


async def write_version(
    context: AppContext,
    locator: str,
    chunks: AsyncIterable[bytes],
    *,
    version_id: str,
    data_key: bytes | None,
) -> int:
    """Stream ``chunks`` to the blob at ``locator``, encrypted under ``data_key`` (bound to
    the version) when given; the stored (ciphertext) bytes. Atomic, as the store's write:
    an exception from ``chunks`` propagates after the partial blob is removed."""
    stream = chunks
    if data_key is not None:
        stream = encryption.encrypt(data_key, object_associated_data(version_id), chunks)
    return await storage_runtime(context).blobs.write(locator, stream)


async def read_version(
    context: AppContext, version: StorageObject, start: int = 0, end: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The plaintext ``[start, end)`` of ``version`` (``end`` ``None``: to its end).

    An encrypted version is read segment by segment: only the ciphertext header and the
    segments holding the range are fetched, each authenticated before its bytes are yielded
    (``encryption.DecryptionFailed`` otherwise). Raises ``BlobNotFound`` when the blob is gone.
    """
    end = version.size if end is None else min(end, version.size)
    if not 0 <= start <= end:
        raise ValueError("the range is outside the version")
    if start == end:
        return
    blobs = storage_runtime(context).blobs
    if not version.encrypted:
        async for chunk in blobs.read(version.locator, start, end):
            yield chunk
        return
    if version.data_key_sealed is None:
        raise encryption.DecryptionFailed("the version has no data key")
    associated_data = object_associated_data(version.id)
    data_key = context.keyring.open(version.data_key_sealed, associated_data)
    locator = version.locator
    async for piece in encryption.decrypt_stored_range(
        data_key,
        associated_data,
        lambda cstart, cend: blobs.read(locator, cstart, cend),
        version.size,
        start,
        end,
    ):
        yield piece


async def delete_blobs(context: AppContext, locators: list[str]) -> None:
    """Remove the blobs of versions whose rows are gone (after their commit)."""
    blobs = storage_runtime(context).blobs
    for locator in locators:
        if not locator:
            continue
        try:
            await blobs.delete(locator)
        except Exception:  # the rows are gone: an orphan blob is unreadable, never an error
            log.warning("storage.blob_delete_failed", locator=locator, exc_info=True)

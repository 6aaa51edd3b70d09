"""What every blob store shares: the protocol, its two errors, and the locator rules.

A blob store keeps opaque bytes under a *locator*, a ``/``-separated relative name made by
the storage service (``<tenant_id>/<bucket_id>/<object_id>``, ``uploads/<upload_id>/<part>``).
It knows nothing of buckets, keys, versions, encryption or scanning: the service decides
what the bytes are and where they go; a store only keeps them, atomically.

Exception tree::

    BlobNotFound         nothing at the locator (a read of a missing blob)
    BackendUnavailable   the store did not answer, timed out or refused (the API answers 503)
    ValueError           an unsafe locator or prefix, or a bad range: a bug in the caller
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from keel.core.errors import ServiceUnavailable

#: Reads yield chunks of at most this many bytes.
CHUNK_BYTES = 1024 * 1024

#: The longest locator accepted, in UTF-8 bytes (S3's limit on a key, before the prefix).
MAX_LOCATOR_BYTES = 1024

#: The longest segment, in UTF-8 bytes: file systems take names of up to 255 bytes, and the
#: local store's temporary file adds its own affixes to the name (``.<name>.<random>.tmp``).
MAX_SEGMENT_BYTES = 200


class BlobNotFound(Exception):
    """Nothing is stored at the locator."""


class BackendUnavailable(ServiceUnavailable):
    """The store did not answer, timed out or refused the request: a 503 problem with
    ``Retry-After`` wherever it reaches the API (an upload, a part, a download).

    The message names the failure (an error code, ``connection refused``) and never a
    credential.
    """

    def __init__(self, message: str = "The blob store did not answer.") -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


#: What a caller is told to wait when the store is down.
RETRY_AFTER_SECONDS = 5

#: Blobs one request of a listing fetches (S3's page; the local store's hop to its thread).
LIST_PAGE = 1000


@dataclass(frozen=True)
class ListedBlob:
    """A blob as :meth:`BlobStore.list_blobs` finds it."""

    locator: str
    #: Stored bytes (ciphertext, for an encrypted version).
    size: int
    #: When the blob was last written (aware, UTC).
    modified_at: datetime


class BlobStore(Protocol):
    """Where the storage service keeps an object's bytes (the local disk or one S3 bucket)."""

    #: ``"local"`` or ``"s3"``.
    name: str

    async def write(self, locator: str, chunks: AsyncIterable[bytes]) -> int:
        """Stream ``chunks`` to the blob at ``locator`` and return the bytes written.

        Constant memory, and atomic: nothing new is visible at ``locator`` (a blob already
        there stays as it was) unless the whole stream was written. An exception raised by
        the iterator, or a cancellation, propagates after the partial write is removed.
        """
        ...

    def read(self, locator: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of the blob (``end`` ``None``: to its end), in
        chunks of at most :data:`CHUNK_BYTES`.

        The range is clipped to the blob's size (a range past its end yields nothing).
        Raises :class:`BlobNotFound` on the first iteration when nothing is stored at
        ``locator``. Close the iterator (``contextlib.aclosing``) when stopping early.
        """
        ...

    async def size(self, locator: str) -> int | None:
        """The blob's size in bytes, ``None`` when nothing is stored at ``locator``."""
        ...

    async def delete(self, locator: str) -> None:
        """Remove the blob; removing a missing blob is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every blob whose locator lies under ``prefix`` (``"a/b"`` or ``"a/b/"``:
        ``a/b/1`` and ``a/b/c/2``, not ``a/bc``) and return how many were removed."""
        ...

    def list_blobs(self, prefix: str) -> AsyncGenerator[ListedBlob, None]:
        """Yield every blob whose locator lies under ``prefix`` (as :meth:`delete_prefix`
        reads it), in no particular order, fetching :data:`LIST_PAGE` at a time: a listing
        of any size holds one page in memory. A blob written or removed while the listing
        runs may or may not be listed. Close the iterator when stopping early.
        """
        ...

    async def aclose(self) -> None:
        """Release the store's connections; the store is not used afterwards."""
        ...


def locator_segments(locator: str) -> list[str]:
    """The segments of a safe locator, or :class:`ValueError` naming what is wrong.

    Safe: a non-empty relative name of at most :data:`MAX_LOCATOR_BYTES` UTF-8 bytes whose
    ``/``-separated segments are neither empty, ``.`` nor ``..`` nor longer than
    :data:`MAX_SEGMENT_BYTES`, with no control
    character or backslash anywhere (a backslash is a separator on some file systems). The
    service makes locators itself, so an unsafe one is a bug: refusing it keeps a blob from
    landing outside the store's root or under a name a later read would resolve differently.
    """
    if not isinstance(locator, str) or not locator:
        raise ValueError("a locator must be a non-empty string")
    if len(locator.encode("utf-8", "surrogatepass")) > MAX_LOCATOR_BYTES:
        raise ValueError(f"a locator is at most {MAX_LOCATOR_BYTES} bytes")
    if any(ord(character) < 0x20 or character in "\x7f\\" for character in locator):
        raise ValueError("a locator holds no control character or backslash")
    if locator.startswith("/"):
        raise ValueError("a locator is relative (no leading '/')")
    segments = locator.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError("a locator has no empty, '.' or '..' segment")
    if any(
        len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for segment in segments
    ):
        raise ValueError(f"a locator's segments are at most {MAX_SEGMENT_BYTES} bytes")
    return segments


def prefix_segments(prefix: str) -> list[str]:
    """The segments of a safe prefix for :meth:`BlobStore.delete_prefix` and
    :meth:`BlobStore.list_blobs`: a safe locator,
    with an optional trailing ``/``. The empty prefix (every blob) is refused."""
    return locator_segments(prefix.removesuffix("/") if isinstance(prefix, str) else prefix)


def check_range(start: int, end: int | None) -> None:
    """:class:`ValueError` unless ``0 <= start`` and ``start <= end`` (when given)."""
    if start < 0:
        raise ValueError("a range starts at 0 or later")
    if end is not None and end < start:
        raise ValueError("a range ends at or after its start")

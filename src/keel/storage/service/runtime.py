"""What a process serving storage holds between requests: the blob store, the scanner and the
key of signed URLs (in memory, so a signed URL is verified without a database hit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from keel.core.context import AppContext, PlatformTask, ResourceKey

if TYPE_CHECKING:
    from keel.storage.backends import BlobStore
    from keel.storage.scanning import Clamd

#: The ``storage.scan`` task: a job per stored version of a bucket that scans; its handler
#: streams the version to clamd and records the verdict.
SCAN = PlatformTask(
    "storage",
    "scan",
    "keel.storage.service.pipeline:scan_version",
    max_attempts=8,
    timeout_seconds=900,
)
#: The ``storage.lifecycle`` task: expiry, version pruning, incomplete multipart uploads,
#: orphan blobs.
LIFECYCLE = PlatformTask(
    "storage",
    "lifecycle",
    "keel.storage.service.lifecycle:sweep",
    max_attempts=3,
    timeout_seconds=900,
)


@dataclass
class StorageRuntime:
    blobs: BlobStore
    #: ``None``: no scanner configured; versions of scanning buckets stay pending.
    clamd: Clamd | None
    #: The HMAC key of signed URLs and POST policies.
    signing_key: bytes

    async def aclose(self) -> None:
        await self.blobs.aclose()


STORAGE_RUNTIME: ResourceKey[StorageRuntime] = ResourceKey("storage.runtime")


def storage_runtime(context: AppContext) -> StorageRuntime:
    return context.resources[STORAGE_RUNTIME]

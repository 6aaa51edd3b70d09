"""``SyncStorageClient``: the blocking face of ``StorageClient``, on an event loop in a thread.

Each call is :class:`StorageClient`'s own, run on the face's loop thread:
:func:`~keel_client._service.blocking` turns an async method into a blocking one with the same
parameters, so the face holds no logic (:class:`~keel_client._service.SyncFace` gives the
thread, ``with`` and ``close``). ``list`` iterates the pages, one call a page; ``open`` (an
async stream) has no blocking twin: ``download`` writes to a path or file at constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Unpack

from keel_client._service import SyncFace, blocking
from keel_client.http import RequestOptions
from keel_client.storage._client import StorageClient
from keel_client.storage._models import ObjectPage

__all__ = ["SyncStorageClient"]


class SyncStorageClient(SyncFace[StorageClient]):
    """A :class:`StorageClient` for code without an event loop (Flask, Django, a script):
    the same calls, each blocking until it returns.

    Example::

        with SyncStorageClient(StorageClient.from_env()) as storage:
            info = storage.upload("invoices", "2026/42.pdf", "/tmp/42.pdf")
            storage.download("invoices", "2026/42.pdf", "/tmp/copy.pdf")

    ``SyncKeel.storage`` is one on the ``SyncKeel``'s thread and pool. A ``progress``
    callback runs on that thread.
    """

    thread_name = "keel-storage"

    def list(
        self, bucket: str, *, prefix: str = "", limit: int = 100,
        **options: Unpack[RequestOptions],
    ) -> Iterator[ObjectPage]:  # fmt: skip
        """See :meth:`StorageClient.list`: the pages, one call each."""
        cursor: str | None = None
        while True:
            page = self._runner.call(
                self.client.list_page(bucket, prefix=prefix, cursor=cursor, limit=limit, **options)
            )
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    create_bucket = blocking(StorageClient.create_bucket)
    get_bucket = blocking(StorageClient.get_bucket)
    update_bucket = blocking(StorageClient.update_bucket)
    list_buckets = blocking(StorageClient.list_buckets)
    delete_bucket = blocking(StorageClient.delete_bucket)
    upload = blocking(StorageClient.upload)
    resume_upload = blocking(StorageClient.resume_upload)
    create_upload = blocking(StorageClient.create_upload)
    get_upload = blocking(StorageClient.get_upload)
    abort_upload = blocking(StorageClient.abort_upload)
    download = blocking(StorageClient.download)
    head = blocking(StorageClient.head)
    info = blocking(StorageClient.info)
    delete = blocking(StorageClient.delete)
    wait_until_clean = blocking(StorageClient.wait_until_clean)
    presign_upload = blocking(StorageClient.presign_upload)
    presign_download = blocking(StorageClient.presign_download)
    presign_post = blocking(StorageClient.presign_post)
    list_page = blocking(StorageClient.list_page)

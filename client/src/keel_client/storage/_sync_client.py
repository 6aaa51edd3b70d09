"""``SyncStorageClient``: the blocking face of ``StorageClient``, on an event loop in a thread.

Each call is :class:`StorageClient`'s own, run on the face's loop thread: :func:`_blocking`
turns an async method into a blocking one with the same parameters, so the face holds no
logic. ``list`` iterates the pages, one call a page; ``open`` (an async stream) has no
blocking twin: ``download`` writes to a path or file at constant memory.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, Unpack

from keel_client._loop_thread import LoopThread
from keel_client.http import RequestOptions
from keel_client.storage._client import StorageClient
from keel_client.storage._models import ObjectPage

__all__ = ["SyncStorageClient"]

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds ``close()`` gives the client to close its pool.
CLOSE_TIMEOUT = 30.0


def _blocking(
    method: Callable[Concatenate[StorageClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncStorageClient, P], T]:
    """``method`` of :class:`StorageClient`, run on the face's loop thread until it returns."""

    @functools.wraps(method)
    def call(face: SyncStorageClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return face._runner.call(method(face.client, *args, **kwargs))

    return call


class SyncStorageClient:
    """A :class:`StorageClient` for code without an event loop (Flask, Django, a script):
    the same calls, each blocking until it returns.

    Example::

        with SyncStorageClient(StorageClient.from_env()) as storage:
            info = storage.upload("invoices", "2026/42.pdf", "/tmp/42.pdf")
            storage.download("invoices", "2026/42.pdf", "/tmp/copy.pdf")

    ``SyncKeel.storage`` is one on the ``SyncKeel``'s thread and pool. A ``progress``
    callback runs on that thread.
    """

    def __init__(self, client: StorageClient) -> None:
        self.client = client
        self._runner = LoopThread("keel-storage")
        self._runner.start()
        self._owns_runner = True

    @classmethod
    def _on_runner(cls, client: StorageClient, runner: LoopThread) -> Self:
        """The blocking face of ``client`` on a loop thread already running, which it leaves
        running (``keel_client.SyncKeel`` runs all its sub-clients on one)."""
        face = cls.__new__(cls)
        face.client, face._runner, face._owns_runner = client, runner, False
        return face

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (its pool if it owns one) and the thread it ran on; on a
        ``SyncKeel``'s thread, the ``SyncKeel`` does that."""
        if self._owns_runner and self._runner.is_running:
            self._runner.stop(self.client.aclose(), timeout=CLOSE_TIMEOUT)

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

    create_bucket = _blocking(StorageClient.create_bucket)
    get_bucket = _blocking(StorageClient.get_bucket)
    update_bucket = _blocking(StorageClient.update_bucket)
    list_buckets = _blocking(StorageClient.list_buckets)
    delete_bucket = _blocking(StorageClient.delete_bucket)
    upload = _blocking(StorageClient.upload)
    resume_upload = _blocking(StorageClient.resume_upload)
    create_upload = _blocking(StorageClient.create_upload)
    get_upload = _blocking(StorageClient.get_upload)
    abort_upload = _blocking(StorageClient.abort_upload)
    download = _blocking(StorageClient.download)
    head = _blocking(StorageClient.head)
    info = _blocking(StorageClient.info)
    delete = _blocking(StorageClient.delete)
    wait_until_clean = _blocking(StorageClient.wait_until_clean)
    presign_upload = _blocking(StorageClient.presign_upload)
    presign_download = _blocking(StorageClient.presign_download)
    presign_post = _blocking(StorageClient.presign_post)
    list_page = _blocking(StorageClient.list_page)

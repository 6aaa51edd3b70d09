"""``SyncJobsClient``: the blocking face of ``JobsClient``, on an event loop in a thread."""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from typing import Any, Self, Unpack

from keel_client._loop_thread import LoopThread
from keel_client.http import RequestOptions
from keel_client.jobs._client import EnqueueOptions, JobsClient, NewJob
from keel_client.jobs._models import Job, JobBatchRef, JobPage, JobRef, JobState
from keel_client.jobs._spool import JobSpool

__all__ = ["SyncJobsClient"]

#: Seconds ``close()`` gives the client to flush its spool and close.
CLOSE_TIMEOUT = 30.0


class SyncJobsClient:
    """A :class:`JobsClient` for code without an event loop (Flask, Django, a script): each
    call runs on the client's loop thread and blocks until it returns.

    Example::

        with SyncJobsClient(JobsClient.from_env()) as jobs:
            jobs.open_spool("/var/spool/billing-jobs")
            ref = jobs.enqueue("send_report", 42, queue="reports")

    ``SyncKeel.jobs`` is one on the ``SyncKeel``'s thread and pool.
    """

    def __init__(self, client: JobsClient) -> None:
        self.client = client
        self._runner = LoopThread("keel-jobs")
        self._runner.start()
        self._owns_runner = True

    @classmethod
    def _on_runner(cls, client: JobsClient, runner: LoopThread) -> Self:
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

    def open_spool(self, directory: str | os.PathLike[str], **options: Any) -> JobSpool:
        """See :meth:`JobsClient.open_spool`."""
        return self._runner.call(self.client.open_spool(directory, **options))

    def enqueue(
        self,
        task: str,
        /,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> JobRef:
        """See :meth:`JobsClient.enqueue`."""
        return self._runner.call(self.client.enqueue(task, *args, kwargs=kwargs, **options))

    def enqueue_many(
        self, jobs: Sequence[NewJob], **options: Unpack[RequestOptions]
    ) -> JobBatchRef:
        """See :meth:`JobsClient.enqueue_many`."""
        return self._runner.call(self.client.enqueue_many(jobs, **options))

    def get(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """See :meth:`JobsClient.get`."""
        return self._runner.call(self.client.get(job_id, **options))

    def list_jobs(
        self,
        queue: str,
        *,
        state: JobState | str | None = None,
        limit: int = 100,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> JobPage:
        """See :meth:`JobsClient.list_jobs`."""
        return self._runner.call(
            self.client.list_jobs(queue, state=state, limit=limit, after=after, **options)
        )

    def cancel(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """See :meth:`JobsClient.cancel`."""
        return self._runner.call(self.client.cancel(job_id, **options))

    def requeue(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """See :meth:`JobsClient.requeue`."""
        return self._runner.call(self.client.requeue(job_id, **options))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """See :meth:`JobsClient.flush`."""
        return self._runner.call(self.client.flush(timeout))

    def close(self) -> None:
        """Close the client (its spool, and its pool if it owns one) and the thread it ran
        on; on a ``SyncKeel``'s thread, the ``SyncKeel`` does that."""
        if self._owns_runner and self._runner.is_running:
            self._runner.stop(self.client.aclose(), timeout=CLOSE_TIMEOUT)

"""``SyncJobsClient``: the blocking face of ``JobsClient``, on an event loop in a thread."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from keel_client._service import SyncFace
from keel_client.http import RequestOptions
from keel_client.jobs._client import EnqueueOptions, JobsClient, NewJob
from keel_client.jobs._models import Job, JobBatchRef, JobPage, JobRef, JobState
from keel_client.jobs._spool import JobSpool

__all__ = ["SyncJobsClient"]


class SyncJobsClient(SyncFace[JobsClient]):
    """A :class:`JobsClient` for code without an event loop (Flask, Django, a script): each
    call runs on the client's loop thread and blocks until it returns.

    Example::

        with SyncJobsClient(JobsClient.from_env()) as jobs:
            jobs.open_spool("/var/spool/billing-jobs")
            ref = jobs.enqueue("send_report", 42, queue="reports")

    ``SyncKeel.jobs`` is one on the ``SyncKeel``'s thread and pool.
    """

    thread_name = "keel-jobs"

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

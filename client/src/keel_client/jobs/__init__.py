"""Keel's jobs from a service: enqueue, run a worker, enqueue transactionally,
``keel_client.jobs``.

Enqueue (spooled locally while Keel is unreachable, replayed in order)::

    from keel_client import Keel

    async with Keel.from_env() as keel:
        await keel.jobs.open_spool("/var/spool/billing-jobs")
        ref = await keel.jobs.enqueue("send_report", 42, queue="reports")

Run the tasks (``python -m keel_client.jobs run billing.jobs:worker``)::

    from keel_client.jobs import Worker

    worker = Worker(queues=["reports"], concurrency=10)

    @worker.task("send_report", max_attempts=5, timeout=60)
    async def send_report(report_id: int) -> None: ...

Enqueue in the service's own SQLAlchemy transaction (``keel-client[sqlalchemy]``)::

    outbox = Outbox()
    async with session.begin():
        outbox.enqueue(session, "send_receipt", order_id)

Private modules by concept, behind this curated list: ``_models`` (what the endpoints
answer), ``_policy`` (pure decisions: what is spooled, what a failure reports), ``_spool``
(the enqueue spool and its replay), ``_batching`` (concurrent enqueues sharing a request, a
worker's acks sent together), ``_client`` (``JobsClient``), ``_sync_client``
(``SyncJobsClient``), ``_worker`` (``Worker``), ``_outbox`` (``Outbox``, ``OutboxRelay``:
imported on first use, they need SQLAlchemy) and ``__main__`` (the ``run`` command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_client._journal import SpoolError, SpoolFullError, SpoolLockedError
from keel_client._lazy import lazy_names
from keel_client.jobs._client import DEFAULT_QUEUE, EnqueueOptions, JobsClient, JobSettings, NewJob
from keel_client.jobs._models import (
    Ack,
    AckAnswer,
    FetchAnswer,
    HeartbeatAnswer,
    Job,
    JobBatchRef,
    JobError,
    JobPage,
    JobRef,
    JobState,
    Lease,
    RefusedAck,
)
from keel_client.jobs._policy import error_text, is_rejected, is_unreachable, traceback_text
from keel_client.jobs._spool import JobSpool, RejectedJob
from keel_client.jobs._sync_client import SyncJobsClient
from keel_client.jobs._worker import JobContext, Retry, Task, Worker, WorkerStats, current_job

if TYPE_CHECKING:
    from keel_client.jobs._outbox import (
        OUTBOX_TABLE,
        Outbox,
        OutboxJob,
        OutboxRelay,
        outbox_metadata,
    )

#: The outbox needs SQLAlchemy (``keel-client[sqlalchemy]``): imported on first use.
__getattr__ = lazy_names(
    __name__,
    {"_outbox": {"OUTBOX_TABLE", "Outbox", "OutboxJob", "OutboxRelay", "outbox_metadata"}},
)

__all__ = [
    "DEFAULT_QUEUE",
    "OUTBOX_TABLE",
    "Ack",
    "AckAnswer",
    "EnqueueOptions",
    "FetchAnswer",
    "HeartbeatAnswer",
    "Job",
    "JobBatchRef",
    "JobContext",
    "JobError",
    "JobPage",
    "JobRef",
    "JobSettings",
    "JobSpool",
    "JobState",
    "JobsClient",
    "Lease",
    "NewJob",
    "Outbox",
    "OutboxJob",
    "OutboxRelay",
    "RefusedAck",
    "RejectedJob",
    "Retry",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SyncJobsClient",
    "Task",
    "Worker",
    "WorkerStats",
    "current_job",
    "error_text",
    "is_rejected",
    "is_unreachable",
    "outbox_metadata",
    "traceback_text",
]

"""What the jobs endpoints answer, as the SDK reads it: a job, a page of jobs, a leased job,
a heartbeat's answer, the outcome of batched acks, and the references ``enqueue`` returns
(also for a spooled job or one sent in a batch).

Wire JSON follows ``/jobs/v1`` (docs/jobs.md); fields a newer Keel adds are ignored, so an
older SDK keeps reading its answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic

__all__ = ["Ack", "AckAnswer", "FetchAnswer", "HeartbeatAnswer", "Job", "JobBatchRef", "JobError",
           "JobPage", "JobRef", "JobState", "Lease", "RefusedAck"]  # fmt: skip


class JobState(enum.StrEnum):
    """Where a job is: ``scheduled → available → running → completed | retryable |
    discarded (dead) | cancelled``."""

    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    COMPLETED = "completed"
    RETRYABLE = "retryable"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class JobError(_Wire):
    """One failed attempt, as the worker reported it."""

    attempt: int
    at: datetime | None = None
    error: str
    traceback: str | None = None


class Job(_Wire):
    """A job as Keel holds it (``GET /jobs/v1/jobs/{id}``).

    Example::

        job = await keel.jobs.get(ref.id)
        if job.state is JobState.DISCARDED:
            print(job.errors[-1].error)
    """

    id: str
    queue: str
    task: str
    args: Any = None
    priority: int = 0
    state: JobState
    run_at: datetime | None = None
    attempt: int = 0
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    tags: list[str] = []
    unique_key: str | None = None
    progress: Any = None
    result: Any = None
    errors: list[JobError] = []
    created_at: datetime | None = None
    attempted_at: datetime | None = None
    finished_at: datetime | None = None
    #: On an enqueue's answer: the unique key matched a live job, which this is.
    duplicate: bool = False


class JobPage(_Wire):
    """One page of ``GET /jobs/v1/jobs``; pass ``next`` back as ``after`` for the next."""

    jobs: list[Job]
    next: str | None = None


class Lease(_Wire):
    """A job a worker fetched: its arguments and the lease that makes it this worker's.

    ``lease_token`` names this attempt: heartbeat, ack and fail must send it; once the lease
    lapsed and another worker took the job, Keel refuses it (409) and changes nothing.
    """

    id: str
    queue: str
    task: str
    args: Any = None
    attempt: int = 1
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    lease_token: str
    lease_expires_at: datetime | None = None
    progress: Any = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A finished attempt to complete, with its small JSON ``result``, in one request with
    others (:meth:`JobsClient.ack_many`, :meth:`JobsClient.ack_and_fetch`).

    Example::

        answer = await keel.jobs.ack_many([Ack(lease, {"pages": 3}) for lease in done])
    """

    lease: Lease
    result: Any = None

    def to_wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.lease.id, "lease_token": self.lease.lease_token}
        if self.result is not None:
            item["result"] = self.result
        return item


class RefusedAck(_Wire):
    """An ack Keel refused while it took the others of its request: ``status`` is what a
    single ack would have answered (409 the lease is no longer this worker's, 404 no such
    job, 403 a queue the key may not work)."""

    id: str
    status: int
    detail: str | None = None


class AckAnswer(_Wire):
    """The outcome of acks sent together: the jobs completed, and the acks refused, each
    alone."""

    acked: list[str] = []
    refused: list[RefusedAck] = []


class FetchAnswer(AckAnswer):
    """A fetch's answer: the jobs leased, and the outcome of the acks it carried."""

    jobs: list[Lease]


class HeartbeatAnswer(_Wire):
    """The answer to a heartbeat: the lease's new end, and whether the job was cancelled."""

    cancel_requested: bool = False
    lease_expires_at: datetime | None = None


class BatchAnswer(_Wire):
    ids: list[str]
    #: ``duplicates[i]``: job ``i``'s unique key matched a live job (``ids[i]``); empty from
    #: a Keel that does not say.
    duplicates: list[bool] = []


@dataclass(frozen=True, slots=True)
class JobRef:
    """What :meth:`JobsClient.enqueue` returns: the job Keel stored, or the promise of it.

    ``id``: the job's id (``None`` while spooled). ``is_duplicate``: the unique key matched a
    live job, whose id ``id`` is. ``state``: the job's state when Keel answered
    (``available``, or ``scheduled`` for a ``run_at`` ahead; a duplicate's own state), or
    ``None`` (spooled, or a duplicate found in a batch). ``job``: the whole job as Keel
    answered, when the enqueue went alone; ``None`` when it went in a batch with other
    callers' (concurrent enqueues of one client share a request): ``await
    keel.jobs.get(ref.id)`` reads it.

    ``is_spooled``: Keel was unreachable, the job waits in the local spool and is sent, in
    order and with this ``idempotency_key``, once Keel answers.

    Example::

        ref = await keel.jobs.enqueue("send_report", 42)
        if not ref.is_spooled:
            print(ref.id, ref.state)
    """

    idempotency_key: str
    id: str | None = None
    is_duplicate: bool = False
    state: JobState | None = None
    job: Job | None = None
    is_spooled: bool = False

    @classmethod
    def of_job(cls, idempotency_key: str, job: Job) -> JobRef:
        """The reference to ``job``, as an enqueue sent alone answered it."""
        return cls(idempotency_key, job.id, job.duplicate, job.state, job)


@dataclass(frozen=True, slots=True)
class JobBatchRef:
    """What :meth:`JobsClient.enqueue_many` returns: the ids in order, or (``is_spooled``)
    ``None`` until the spool sends the batch, whole, with this ``idempotency_key``."""

    idempotency_key: str
    ids: list[str] | None = None
    is_spooled: bool = False

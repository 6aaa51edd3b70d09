"""What the jobs endpoints answer, as the SDK reads it: a job, a page of jobs, a leased job,
a heartbeat's answer, and the references ``enqueue`` returns (also for a spooled job).

Wire JSON follows ``/jobs/v1`` (docs/jobs.md); fields a newer Keel adds are ignored, so an
older SDK keeps reading its answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic

__all__ = ["HeartbeatAnswer", "Job", "JobBatchRef", "JobError", "JobPage", "JobRef", "JobState",
           "Lease"]  # fmt: skip


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


class FetchAnswer(_Wire):
    jobs: list[Lease]


class HeartbeatAnswer(_Wire):
    """The answer to a heartbeat: the lease's new end, and whether the job was cancelled."""

    cancel_requested: bool = False
    lease_expires_at: datetime | None = None


class BatchAnswer(_Wire):
    ids: list[str]


@dataclass(frozen=True, slots=True)
class JobRef:
    """What :meth:`JobsClient.enqueue` returns: the job Keel stored, or the promise of it.

    ``is_spooled``: Keel was unreachable, the job waits in the local spool and is sent, in
    order and with this ``idempotency_key``, once Keel answers; ``id`` and ``job`` are then
    ``None``. ``is_duplicate``: the unique key matched a live job, which ``job`` is.

    Example::

        ref = await keel.jobs.enqueue("send_report", 42)
        if not ref.is_spooled:
            print(ref.id, ref.job.state)
    """

    idempotency_key: str
    job: Job | None = None
    is_spooled: bool = False

    @property
    def id(self) -> str | None:
        return self.job.id if self.job is not None else None

    @property
    def is_duplicate(self) -> bool:
        return self.job is not None and self.job.duplicate


@dataclass(frozen=True, slots=True)
class JobBatchRef:
    """What :meth:`JobsClient.enqueue_many` returns: the ids in order, or (``is_spooled``)
    ``None`` until the spool sends the batch, whole, with this ``idempotency_key``."""

    idempotency_key: str
    ids: list[str] | None = None
    is_spooled: bool = False

"""Wire models of the jobs protocol (``/jobs/v1/...``), which any language can speak.

Names of queues and tasks are 1-128 letters, digits and ``_.:-``; arguments, results and
progress are JSON, with sizes bounded by ``KEEL_JOBS__MAX_ARGS_BYTES`` and
``KEEL_JOBS__MAX_RESULT_BYTES`` (checked by the router on the encoded JSON).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from keel.jobs.models import JobState

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, examples=["emails"])]
#: A batch enqueue holds at most this many jobs.
MAX_BATCH = 10_000
#: Jobs one fetch hands out at most.
MAX_FETCH = 100
#: The longest a fetch waits for jobs (a long poll).
MAX_WAIT_SECONDS = 30.0
MAX_LEASE_SECONDS = 3600.0
LeaseToken = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UniqueSpec(_Strict):
    """At most one job with ``key`` among the tenant's jobs in ``states`` (default: every state
    that is not final) created within the last ``period_seconds`` (default: any time)."""

    key: str = Field(min_length=1, max_length=200)
    period_seconds: int | None = Field(default=None, ge=1, le=366 * 86400)
    states: list[JobState] | None = Field(default=None, min_length=1)


class JobCreate(_Strict):
    queue: Name = "default"
    task: Name = Field(examples=["send_report"])
    args: list[Any] | dict[str, Any] = Field(default_factory=list)
    #: Lower runs first.
    priority: int = Field(default=0, ge=-1000, le=1000)
    #: When to run it (default: now); a job in the future is ``scheduled``.
    run_at: AwareDatetime | None = None
    max_attempts: int = Field(default=20, ge=1, le=1000)
    timeout_seconds: int = Field(default=300, ge=1, le=86400)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=20
    )
    unique: UniqueSpec | None = None
    #: The job's own retry curve: ``backoff_base_seconds * attempt⁴`` plus jitter (default
    #: base 1 s), at most ``max_backoff_seconds`` (default: an hour).
    backoff_base_seconds: float | None = Field(default=None, gt=0, le=7 * 86400)
    max_backoff_seconds: float | None = Field(default=None, gt=0, le=7 * 86400)


class JobBatch(_Strict):
    jobs: list[JobCreate] = Field(min_length=1, max_length=MAX_BATCH)


class BatchAnswer(BaseModel):
    #: The jobs' ids in the order given (a unique key's existing job where one was live).
    ids: list[str]
    #: ``duplicates[i]``: job ``i``'s unique key named a live job, whose id ``ids[i]`` is.
    duplicates: list[bool]


class JobError(BaseModel):
    attempt: int
    at: datetime
    error: str
    traceback: str | None = None


class Job(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    queue: str
    task: str
    args: Any
    priority: int
    state: JobState
    run_at: datetime
    attempt: int
    max_attempts: int
    timeout_seconds: int
    tags: list[str]
    unique_key: str | None
    progress: Any = None
    result: Any = None
    errors: list[JobError]
    created_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None


class Enqueued(Job):
    #: True when the unique key named a job that already existed: that job is the answer.
    duplicate: bool = False


class JobPage(BaseModel):
    jobs: list[Job]
    #: Pass as ``after`` for the next page; ``null`` on the last one.
    next: str | None


#: Acks one request carries at most.
MAX_ACKS = 100


class AckItem(_Strict):
    id: str = Field(min_length=1, max_length=36)
    lease_token: LeaseToken
    #: A small result kept on the job (``KEEL_JOBS__MAX_RESULT_BYTES``).
    result: Any = None


class AckBatch(_Strict):
    acks: list[AckItem] = Field(min_length=1, max_length=MAX_ACKS)


class RefusedAck(BaseModel):
    id: str
    #: What a single ack would have answered: 404, 403 or 409.
    status: int
    detail: str


class AckAnswer(BaseModel):
    #: The jobs completed.
    acked: list[str]
    #: The acks refused, each alone (the others went through).
    refused: list[RefusedAck]


class FetchRequest(_Strict):
    #: Tried in this order: a job of the first queue before one of the second.
    queues: list[Name] = Field(min_length=1, max_length=20)
    limit: int = Field(default=1, ge=1, le=MAX_FETCH)
    #: Wait up to this long for jobs when none is due (a long poll); 0 answers at once.
    wait_seconds: float = Field(default=0.0, ge=0.0, le=MAX_WAIT_SECONDS)
    #: The lease: heartbeat before it lapses, or the job is handed to another worker
    #: (default ``KEEL_JOBS__DEFAULT_LEASE_SECONDS``, 30).
    lease_seconds: float | None = Field(default=None, ge=1.0, le=MAX_LEASE_SECONDS)
    #: Who holds the lease, as job listings show it (a host and process, say).
    worker_id: str = Field(min_length=1, max_length=200)
    #: Acks of jobs this worker finished, applied before the fetch (saves a request each).
    ack: list[AckItem] = Field(default_factory=list, max_length=MAX_ACKS)


class Lease(BaseModel):
    id: str
    queue: str
    task: str
    args: Any
    attempt: int
    max_attempts: int
    timeout_seconds: int
    lease_token: str
    lease_expires_at: datetime
    progress: Any = None


class FetchAnswer(BaseModel):
    jobs: list[Lease]
    #: The outcome of the request's ``ack`` list (empty when it had none).
    acked: list[str] = Field(default_factory=list)
    refused: list[RefusedAck] = Field(default_factory=list)


class HeartbeatRequest(_Strict):
    lease_token: LeaseToken
    lease_seconds: float = Field(default=30.0, ge=1.0, le=MAX_LEASE_SECONDS)
    #: Anything small the task reports (``{"done": 40, "total": 100}``); kept on the job.
    progress: Any = None


class HeartbeatAnswer(BaseModel):
    #: The job was cancelled: stop it (its ack or fail will be refused).
    cancel_requested: bool
    lease_expires_at: datetime | None


class AckRequest(_Strict):
    lease_token: LeaseToken
    #: A small result kept on the job (``KEEL_JOBS__MAX_RESULT_BYTES``).
    result: Any = None


class FailRequest(_Strict):
    lease_token: LeaseToken
    error: str = Field(min_length=1, max_length=4000)
    traceback: str | None = Field(default=None, max_length=32_000)
    #: Retry after this many seconds instead of the backoff.
    retry_in_seconds: float | None = Field(default=None, ge=0, le=30 * 86400)
    #: Do not retry: the job goes to the dead letter queue now.
    discard: bool = False


class DeadRequeue(_Strict):
    #: Only this queue's dead jobs (default: every queue the caller administers... all).
    queue: Name | None = None
    #: Only these jobs.
    ids: list[str] | None = Field(default=None, max_length=MAX_BATCH)


class Requeued(BaseModel):
    requeued: int


class StateStats(BaseModel):
    count: int
    #: Seconds since the oldest job in this state became due (``run_at``), or was created.
    oldest_age_seconds: float | None


class Queue(BaseModel):
    name: str
    paused: bool
    concurrency_limit: int | None
    rate_limit_per_second: float | None
    states: dict[str, StateStats]


class QueueList(BaseModel):
    queues: list[Queue]


class QueueUpdate(_Strict):
    #: Jobs of the queue running at once, across every worker (``null``: no limit).
    concurrency_limit: int | None = Field(default=None, ge=1, le=100_000)
    #: Jobs of the queue started per second, across every worker (``null``: no limit).
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=100_000)


class ScheduleWrite(_Strict):
    #: Five fields (minute hour day month weekday), or six with seconds first... see docs/jobs.md.
    cron: str = Field(min_length=1, max_length=200, examples=["0 2 * * *"])
    #: An IANA time zone; the cron is read in it (daylight saving included).
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    queue: Name = "default"
    task: Name
    args: list[Any] | dict[str, Any] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_attempts: int = Field(default=20, ge=1, le=1000)
    enabled: bool = True


class Schedule(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    cron: str
    timezone: str
    queue: str
    task: str
    args: Any
    priority: int
    max_attempts: int
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None


class ScheduleList(BaseModel):
    schedules: list[Schedule]

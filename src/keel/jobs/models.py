"""The jobs service's tables: jobs, the queues that are configured, and cron schedules.

A job's states run ``scheduled → available → running → completed | retryable | discarded |
cancelled`` (``retryable`` goes back to ``running`` when its ``run_at`` comes; ``discarded`` is
the dead letter queue). A claim is a lease: ``lease_token`` names the current attempt and
``lease_expires_at`` says when it lapses unless the worker heartbeats.

**Priority: lower runs first** (0 before 10), then the earlier ``run_at``, as in Oban and River.

A queue has a :class:`JobQueue` row only once it is configured (paused, limited): a queue
without one is running and unlimited. A :class:`JobSchedule` enqueues a job at each tick of
its cron expression.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class JobState(StrEnum):
    scheduled = "scheduled"
    available = "available"
    running = "running"
    completed = "completed"
    retryable = "retryable"
    discarded = "discarded"
    cancelled = "cancelled"


#: States a job leaves no more by itself (only an explicit requeue brings it back).
FINAL_STATES = frozenset({JobState.completed, JobState.discarded, JobState.cancelled})
#: States a claim takes jobs from, once their ``run_at`` has come.
CLAIMABLE_STATES = (JobState.available, JobState.scheduled, JobState.retryable)
#: The claimable states as SQL with the values written out: the predicate of the claim's
#: partial index, which a query must repeat word for word for PostgreSQL to use that index
#: in a prepared statement's generic plan (bound values prove nothing about the predicate).
CLAIMABLE = text("state IN ('available', 'scheduled', 'retryable')")
#: The states a unique key counts by default: the jobs that have not ended.
LIVE_STATES = frozenset(JobState) - FINAL_STATES


class Job(TenantScoped, Base):
    """One job of a tenant's queue."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The claim: a tenant's queues, claimable states, in priority then run_at order.
        Index("ix_jobs_claim", "tenant_id", "queue", "state", "priority", "run_at"),
        # The claim of one queue: its claimable jobs in claim order, so a claim reads the
        # first few index entries rather than sorting every waiting job.
        Index(
            "ix_jobs_claimable",
            "tenant_id",
            "queue",
            "priority",
            "run_at",
            "id",
            postgresql_where=CLAIMABLE,
            sqlite_where=CLAIMABLE,
        ),
        # The rescue of lapsed leases, across tenants.
        Index("ix_jobs_lease", "state", "lease_expires_at"),
        # Retention: ended jobs by age, across tenants.
        Index("ix_jobs_finished", "state", "finished_at"),
        # Unique keys are looked up (under a lock of the key) rather than enforced by an index:
        # which states count, and for how long, is the enqueuer's choice.
        Index("ix_jobs_unique_key", "tenant_id", "unique_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    queue: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[Any] = mapped_column(JSON, default=list)
    #: Lower runs first.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: A :class:`JobState`.
    state: Mapped[str] = mapped_column(String(16), default=JobState.available)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Attempts started so far (a claim adds one).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=20)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=300)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    unique_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The retry policy of this job when not the default: ``{"base_seconds": b,
    #: "max_seconds": m}`` (see :mod:`keel.jobs.service.retry`).
    backoff: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    #: A random token of the current claim (not a credential: it only tells attempts apart).
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: What the worker last reported with a heartbeat (small JSON), kept after the job ends.
    progress: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    #: ``[{"attempt": n, "at": iso, "error": str, "traceback": str | None}]``, oldest first.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobQueue(TenantScoped, Base):
    """A configured queue: paused or not, and its limits across every worker.

    The rate limit is a token bucket kept on the row: ``rate_tokens`` as of
    ``rate_refilled_at``, refilled at ``rate_limit_per_second`` up to a burst of
    ``max(1, rate)``. Claims of a limited queue lock its row, so they take turns over it.
    """

    __tablename__ = "job_queues"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_job_queues_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Most jobs of the queue running at once, across all workers; ``None``: no limit.
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Most claims per second, across all workers; ``None``: no limit.
    rate_limit_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_tokens: Mapped[float] = mapped_column(Float, default=0.0)
    rate_refilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobSchedule(TenantScoped, Base):
    """A cron schedule: at each tick (in ``timezone``), one job of ``task`` on ``queue``.

    ``next_run_at`` (UTC) is the next tick; firing a tick advances it in the same transaction
    that enqueues the tick's job, which is what makes a tick fire once across replicas.
    """

    __tablename__ = "job_schedules"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_job_schedules_tenant_name"),
        # The firing loop: due schedules of every tenant.
        Index("ix_job_schedules_due", "enabled", "next_run_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    #: Five fields, or six with seconds first (``*/10 * * * * *``: every ten seconds).
    cron: Mapped[str] = mapped_column(String(200))
    #: An IANA time zone name (``Europe/Paris``); the cron's fields are read on its clock.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    queue: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[Any] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=20)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=300)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

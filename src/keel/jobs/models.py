"""The jobs service's one table: a job, from enqueue to its final state.

States run ``scheduled → available → running → completed | retryable | discarded | cancelled``
(``retryable`` goes back to ``running`` when its ``run_at`` comes; ``discarded`` is the dead
letter queue). A claim is a lease: ``lease_token`` names the current attempt and
``lease_expires_at`` says when it lapses unless the worker heartbeats.

**Priority: lower runs first** (0 before 10), then the earlier ``run_at``, as in Oban and River.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, text
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


#: States a job leaves no more by itself (``discarded`` only by a requeue).
FINAL_STATES = frozenset({JobState.completed, JobState.discarded, JobState.cancelled})
#: States a claim takes jobs from, once their ``run_at`` has come.
CLAIMABLE_STATES = (JobState.available, JobState.scheduled, JobState.retryable)

# The unique key holds among the jobs that are not final: a partial unique index, the same
# predicate on both databases, so a concurrent second enqueue fails at the insert.
_UNIQUE_KEY_LIVE = text(
    "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
)


class Job(TenantScoped, Base):
    """One job of a tenant's queue."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The claim: a tenant's queues, claimable states, in priority then run_at order.
        Index("ix_jobs_claim", "tenant_id", "queue", "state", "priority", "run_at"),
        # The rescue of lapsed leases, across tenants.
        Index("ix_jobs_lease", "state", "lease_expires_at"),
        Index(
            "uq_jobs_unique_key",
            "tenant_id",
            "unique_key",
            unique=True,
            postgresql_where=_UNIQUE_KEY_LIVE,
            sqlite_where=_UNIQUE_KEY_LIVE,
        ),
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
    #: A random token of the current claim (not a credential: it only tells attempts apart).
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: ``[{"attempt": n, "at": iso, "error": str, "traceback": str | None}]``, oldest first.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

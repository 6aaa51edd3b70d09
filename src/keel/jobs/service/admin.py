"""Reading, listing, cancelling and requeueing jobs.

Requeueing is the one way a job leaves a final state: it becomes available now with a fresh
set of attempts and no lease (a worker still holding the token of a cancelled attempt is
refused from then on); its errors, progress and result of before are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import FINAL_STATES, Job, JobState

if TYPE_CHECKING:
    from sqlalchemy import Table

#: The most jobs one page of :func:`list_jobs` holds.
MAX_PAGE = 1000


async def get_job(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    bind_tenant(session, tenant_id)
    job = await session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


async def list_jobs(
    session: AsyncSession,
    tenant_id: str,
    *,
    queue: str | None = None,
    state: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> list[Job]:
    """Up to ``limit`` of the tenant's jobs, oldest first (ids are time-ordered), optionally
    of one queue and state, after the job ``after`` (the last of the previous page)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed(f"limit is 1 to {MAX_PAGE}.")
    if state is not None and state not in set(JobState):
        raise ValidationFailed(f"state is one of {', '.join(JobState)}.")
    bind_tenant(session, tenant_id)
    query = select(Job)
    if queue is not None:
        query = query.where(Job.queue == queue)
    if state is not None:
        query = query.where(Job.state == state)
    if after is not None:
        query = query.where(Job.id > after)
    return list(
        await session.scalars(
            query.order_by(Job.id).limit(limit).execution_options(populate_existing=True)
        )
    )


async def _locked_job(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    job = await session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


async def cancel(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    """Cancel a job that has not ended. A running one keeps its lease token, so its worker's
    next heartbeat answers "cancel requested" (and its complete or fail is refused)."""
    job = await _locked_job(session, tenant_id, job_id)
    if job.state not in FINAL_STATES:
        job.state = JobState.cancelled
        job.finished_at = utcnow()
        await session.flush()
    return job


def _make_available(job: Job) -> None:
    job.state = JobState.available
    job.run_at = utcnow()
    job.attempt = 0
    job.finished_at = None
    job.lease_token = None
    job.lease_expires_at = None


async def requeue(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    """Run a discarded or cancelled job again (see the module's text)."""
    job = await _locked_job(session, tenant_id, job_id)
    if job.state not in (JobState.discarded, JobState.cancelled):
        raise Conflict(f"The job is {job.state}; only a discarded or cancelled job is requeued.")
    _make_available(job)
    await session.flush()
    return job


async def requeue_dead(
    session: AsyncSession,
    tenant_id: str,
    job_ids: Sequence[str] | None = None,
    *,
    queue: str | None = None,
) -> int:
    """Make discarded jobs available again: those of ``job_ids``, or of ``queue``, or all
    of the tenant's when neither is given. Returns how many. One ``UPDATE``, whatever the
    count: the dead letter queue of a bad night may hold hundreds of thousands of jobs, and
    none of them need be loaded (as :func:`requeue` does for one)."""
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    jobs = cast("Table", Job.__table__)
    statement = update(jobs).where(
        jobs.c.tenant_id == tenant_id, jobs.c.state == JobState.discarded.value
    )
    if job_ids is not None:
        statement = statement.where(jobs.c.id.in_(list(job_ids)))
    if queue is not None:
        statement = statement.where(jobs.c.queue == queue)
    result = await session.execute(
        statement.values(
            state=JobState.available.value,
            run_at=utcnow(),
            attempt=0,
            finished_at=None,
            lease_token=None,
            lease_expires_at=None,
        ).execution_options(all_tenants=True)
    )
    return int(getattr(result, "rowcount", 0) or 0)

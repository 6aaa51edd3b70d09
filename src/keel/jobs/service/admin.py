"""Reading, cancelling and requeueing jobs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import NotFound
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import FINAL_STATES, Job, JobState


async def get_job(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    bind_tenant(session, tenant_id)
    job = await session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


async def cancel(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    """Cancel a job that has not ended. A running one keeps its lease token, so its worker's
    next heartbeat answers "cancel requested" (and its complete or fail is refused)."""
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
    if job.state not in FINAL_STATES:
        job.state = JobState.cancelled
        job.finished_at = utcnow()
        await session.flush()
    return job


async def requeue_dead(
    session: AsyncSession, tenant_id: str, job_ids: Sequence[str] | None = None
) -> int:
    """Make discarded jobs (all of the tenant's when ``job_ids`` is None) available now with
    a fresh set of attempts; their errors are kept. Returns how many."""
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    query = select(Job).where(Job.state == JobState.discarded)
    if job_ids is not None:
        query = query.where(Job.id.in_(list(job_ids)))
    jobs = list(
        await session.scalars(query.with_for_update().execution_options(populate_existing=True))
    )
    now = utcnow()
    for job in jobs:
        job.state = JobState.available
        job.run_at = now
        job.attempt = 0
        job.finished_at = None
    await session.flush()
    return len(jobs)

"""Operators' routes: reading jobs and queues; pausing, resuming and limiting a queue;
cancelling and requeuing jobs. Every change is audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CallerActor, CurrentPrincipal
from keel.core.deps import DbSession
from keel.core.direct import DirectRoute
from keel.core.errors import NotFound
from keel.core.tenancy import bind_tenant
from keel.jobs import schemas, service
from keel.jobs.audit_actions import record_change
from keel.jobs.auth import QueueAccess, check_queues, may
from keel.jobs.models import Job, JobState
from keel.jobs.router.common import check_job_access
from keel.jobs.service import KEEP
from keel.jobs.signals import signal_after_commit

router = APIRouter(tags=["jobs"], route_class=DirectRoute)

# -- reading ------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_model=schemas.Job)
async def get_job(job_id: str, principal: CurrentPrincipal, session: DbSession) -> Any:
    await check_job_access(session, principal, job_id, QueueAccess.read)
    return await service.get_job(session, principal.tenant_id, job_id)


@router.get("/jobs", response_model=schemas.JobPage)
async def list_jobs(
    principal: CurrentPrincipal,
    session: DbSession,
    queue: Annotated[str, Query(pattern=schemas.NAME_PATTERN)],
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(max_length=36)] = None,
) -> Any:
    """A queue's jobs, oldest first, a page at a time (``after``: the last page's ``next``)."""
    check_queues(principal, [queue], QueueAccess.read)
    jobs = await service.list_jobs(
        session, principal.tenant_id, queue=queue, state=state, limit=limit + 1, after=after
    )
    page = jobs[:limit]
    return {"jobs": page, "next": page[-1].id if len(jobs) > limit else None}


# -- queues -------------------------------------------------------------------------------

QueueName = Annotated[str, Path(pattern=schemas.NAME_PATTERN)]


def _queue_document(overview: service.QueueOverview) -> dict[str, Any]:
    return {
        "name": overview.name,
        "paused": overview.paused,
        "concurrency_limit": overview.concurrency_limit,
        "rate_limit_per_second": overview.rate_limit_per_second,
        "states": {
            state: {"count": stats.count, "oldest_age_seconds": stats.oldest_age_seconds}
            for state, stats in overview.states.items()
        },
    }


async def _overview(session: AsyncSession, tenant_id: str, queue: str) -> dict[str, Any]:
    for overview in await service.list_queues(session, tenant_id):
        if overview.name == queue:
            return _queue_document(overview)
    return _queue_document(service.QueueOverview(name=queue))


@router.get("/queues", response_model=schemas.QueueList)
async def list_queues(principal: CurrentPrincipal, session: DbSession) -> Any:
    """The queues with jobs or a configuration that the caller may read, with their jobs'
    count and the age of the oldest in each state."""
    overviews = await service.list_queues(session, principal.tenant_id)
    return {
        "queues": [
            _queue_document(overview)
            for overview in overviews
            if may(principal, overview.name, QueueAccess.read)
        ]
    }


@router.get("/queues/{queue}", response_model=schemas.Queue)
async def get_queue(queue: QueueName, principal: CurrentPrincipal, session: DbSession) -> Any:
    """One queue (an unknown one: 404)."""
    check_queues(principal, [queue], QueueAccess.read)
    for overview in await service.list_queues(session, principal.tenant_id):
        if overview.name == queue:
            return _queue_document(overview)
    raise NotFound(f"No queue {queue!r}: it has no jobs and no configuration.")


@router.patch("/queues/{queue}", response_model=schemas.Queue)
async def configure_queue(
    queue: QueueName,
    body: schemas.QueueUpdate,
    principal: CurrentPrincipal,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    """Set or remove (``null``) the queue's concurrency and rate limits; a field left out
    stays as it is."""
    check_queues(principal, [queue], QueueAccess.admin)
    before = await service.get_queue_config(session, principal.tenant_id, queue)
    given = body.model_fields_set
    old = {
        "concurrency_limit": before.concurrency_limit if before else None,
        "rate_limit_per_second": before.rate_limit_per_second if before else None,
    }
    after = await service.configure_queue(
        session,
        principal.tenant_id,
        queue,
        concurrency_limit=body.concurrency_limit if "concurrency_limit" in given else KEEP,
        rate_limit_per_second=(
            body.rate_limit_per_second if "rate_limit_per_second" in given else KEEP
        ),
    )
    new = {
        "concurrency_limit": after.concurrency_limit,
        "rate_limit_per_second": after.rate_limit_per_second,
    }
    diff = {
        field: {"before": old[field], "after": new[field]}
        for field in new
        if old[field] != new[field]
    }
    record_change(session, actor, principal.tenant_id, "jobs.queue.configure", "queue", queue, diff)
    signal_after_commit(session, principal.tenant_id, [queue])  # a raised limit frees jobs
    return await _overview(session, principal.tenant_id, queue)


@router.post("/queues/{queue}/pause", response_model=schemas.Queue)
async def pause_queue(
    queue: QueueName, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Stop handing out the queue's jobs (running ones go on); enqueues still land."""
    check_queues(principal, [queue], QueueAccess.admin)
    await service.pause_queue(session, principal.tenant_id, queue)
    record_change(session, actor, principal.tenant_id, "jobs.queue.pause", "queue", queue)
    return await _overview(session, principal.tenant_id, queue)


@router.post("/queues/{queue}/resume", response_model=schemas.Queue)
async def resume_queue(
    queue: QueueName, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    check_queues(principal, [queue], QueueAccess.admin)
    await service.resume_queue(session, principal.tenant_id, queue)
    record_change(session, actor, principal.tenant_id, "jobs.queue.resume", "queue", queue)
    signal_after_commit(session, principal.tenant_id, [queue])
    return await _overview(session, principal.tenant_id, queue)


@router.post("/jobs/{job_id}/cancel", response_model=schemas.Job)
async def cancel_job(
    job_id: str, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Cancel a job that has not ended; a running one's worker hears of it at its next
    heartbeat, and its ack or fail is refused."""
    await check_job_access(session, principal, job_id, QueueAccess.admin)
    job = await service.cancel(session, principal.tenant_id, job_id)
    record_change(session, actor, principal.tenant_id, "jobs.job.cancel", "job", job_id)
    return job


@router.post("/jobs/{job_id}/requeue", response_model=schemas.Job)
async def requeue_job(
    job_id: str, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Make a dead or cancelled job available now, with a fresh set of attempts."""
    await check_job_access(session, principal, job_id, QueueAccess.admin)
    job = await service.requeue(session, principal.tenant_id, job_id)
    record_change(session, actor, principal.tenant_id, "jobs.job.requeue", "job", job_id)
    signal_after_commit(session, principal.tenant_id, [job.queue])
    return job


@router.post("/dead/requeue", response_model=schemas.Requeued)
async def requeue_dead(
    body: schemas.DeadRequeue, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Requeue dead jobs in bulk: a queue's, the ones named, or (with ``jobs:*:admin``) all."""
    tenant_id = principal.tenant_id
    if body.queue is not None:
        queues = [body.queue]
    elif body.ids is not None:
        bind_tenant(session, tenant_id)
        rows = await session.scalars(select(Job.queue).where(Job.id.in_(body.ids)).distinct())
        queues = sorted(rows)
    else:
        queues = ["*"]
    check_queues(principal, queues, QueueAccess.admin)
    count = await service.requeue_dead(session, tenant_id, body.ids, queue=body.queue)
    data = {"queue": body.queue, "ids": len(body.ids) if body.ids is not None else None}
    record_change(
        session,
        actor,
        tenant_id,
        "jobs.dead.requeue",
        "queue",
        body.queue or "*",
        {
            **data,
            "requeued": count,
        },
    )
    if count and queues != ["*"]:  # (all queues: waiting fetches find them at their recheck)
        signal_after_commit(session, tenant_id, queues)
    return {"requeued": count}

"""Keel's own tasks onto the engine: a service enqueues one in the transaction of the change
that calls for it (:mod:`keel.core.context`), and :mod:`keel.jobs.runner` runs it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.context import PlatformTask
from keel.jobs.models import LIVE_STATES, Job
from keel.jobs.service.enqueue import DEFAULT_PRIORITY, Enqueued, NewJob, enqueue_batch, enqueue_one
from keel.jobs.signals import signal_after_commit


def _new_job(
    task: PlatformTask,
    args: Any,
    run_at: datetime | None,
    priority: int,
    unique_key: str | None,
) -> NewJob:
    return NewJob(
        queue=task.queue,
        task=task.task_name,
        args=args,
        priority=priority,
        run_at=run_at,
        max_attempts=task.max_attempts,
        timeout_seconds=task.timeout_seconds,
        unique_key=unique_key,
    )


async def enqueue_task(
    session: AsyncSession,
    tenant_id: str,
    task: PlatformTask,
    args: Any,
    *,
    run_at: datetime | None = None,
    priority: int = DEFAULT_PRIORITY,
    unique_key: str | None = None,
) -> Enqueued:
    """One job of ``task`` in the caller's unit of work; the runner is woken once it commits."""
    enqueued = await enqueue_one(
        session, tenant_id, _new_job(task, args, run_at, priority, unique_key)
    )
    signal_after_commit(session, tenant_id, [task.queue])
    return enqueued


async def enqueue_tasks(
    session: AsyncSession,
    tenant_id: str,
    task: PlatformTask,
    args: Sequence[Any],
    *,
    run_at: datetime | None = None,
    priority: int = DEFAULT_PRIORITY,
) -> list[str]:
    """A job of ``task`` per item of ``args``, in one batch insert; their ids in order."""
    entries = await enqueue_batch(
        session, tenant_id, [_new_job(task, item, run_at, priority, None) for item in args]
    )
    signal_after_commit(session, tenant_id, [task.queue])
    return [entry.id for entry in entries]


async def enqueue_signalled(session: AsyncSession, tenant_id: str, new: NewJob) -> Enqueued:
    """``new`` in the caller's unit of work, its queue's workers woken once it commits: how
    another service hands the fleet a job (a bucket's on-clean hook) or schedules its own
    with options ``enqueue_task`` does not take (a unique key over every state)."""
    enqueued = await enqueue_one(session, tenant_id, new)
    signal_after_commit(session, tenant_id, [new.queue])
    return enqueued


async def live_task_args(session: AsyncSession, task: PlatformTask) -> list[Any]:
    """The arguments of ``task``'s jobs not yet finished (available, scheduled, running or
    retryable), of the session's tenant: what a sweep checks before enqueueing again."""
    rows = await session.scalars(
        select(Job.args).where(
            Job.queue == task.queue, Job.task == task.task_name, Job.state.in_(LIVE_STATES)
        )
    )
    return list(rows)

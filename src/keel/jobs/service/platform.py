"""Keel's own tasks onto the engine: a service enqueues one in the transaction of the change
that calls for it (:mod:`keel.core.context`), and :mod:`keel.jobs.runner` runs it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.context import PlatformTask
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

"""Retention: ended jobs are deleted after a while, a small batch at a time.

Completed and cancelled jobs go ``completed_days`` after they ended, discarded ones (the
dead letter queue, kept longer for a look at their errors) ``discarded_days`` after; 0 keeps
them for ever. Each call deletes at most ``batch`` jobs by id
(``DELETE … WHERE id IN (SELECT id … LIMIT batch)``) and the caller commits between calls, so
no transaction holds locks for long on a large backlog (on SQLite a writer waits at most one
batch). The background loop (:func:`keel.jobs.spec.prune_ended_jobs`) calls it until a call
deletes less than a batch.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.jobs.models import Job, JobState

_KEPT_SHORT = (JobState.completed, JobState.cancelled)


async def _delete_batch(
    session: AsyncSession, states: tuple[JobState, ...], before: datetime, batch: int
) -> int:
    ids = (
        select(Job.id)
        .where(Job.state.in_(list(states)), Job.finished_at < before)
        .limit(batch)
        .scalar_subquery()
    )
    result = await session.execute(
        delete(Job)
        .where(Job.id.in_(ids))
        .execution_options(all_tenants=True, synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount or 0)


async def prune(
    session: AsyncSession,
    *,
    completed_days: float,
    discarded_days: float,
    batch: int = 1000,
    now: datetime | None = None,
) -> int:
    """Delete up to ``batch`` ended jobs of every tenant that are past their retention
    (completed and cancelled ones first); returns how many. Call again while it returns
    ``batch``, committing in between."""
    if batch < 1:
        raise ValueError("batch is at least 1")
    now = now or utcnow()
    deleted = 0
    if completed_days > 0:
        before = now - timedelta(days=completed_days)
        deleted += await _delete_batch(session, _KEPT_SHORT, before, batch)
    if discarded_days > 0 and deleted < batch:
        before = now - timedelta(days=discarded_days)
        deleted += await _delete_batch(session, (JobState.discarded,), before, batch - deleted)
    return deleted

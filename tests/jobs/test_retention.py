"""Retention: ended jobs past their days are deleted, a batch at a time, on SQLite and
PostgreSQL; jobs still to run, and recent or dead ones within their days, stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from keel.core.db import Database, utcnow
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job, JobState
from keel.jobs.service import NewJob, enqueue_many, prune


async def test_ended_jobs_past_their_days_are_pruned_in_batches(
    database: Database, tenant_id: str
) -> None:
    now = utcnow()
    ages = {  # state, days since it ended → kept?
        "completed-old": (JobState.completed, 8, False),
        "completed-old-2": (JobState.completed, 9, False),
        "cancelled-old": (JobState.cancelled, 8, False),
        "completed-new": (JobState.completed, 6, True),
        "discarded-8": (JobState.discarded, 8, True),  # the dead are kept 30 days
        "discarded-31": (JobState.discarded, 31, False),
        "available-old": (JobState.available, None, True),
        "running-old": (JobState.running, None, True),
    }
    async with database.session() as session:
        ids = await enqueue_many(session, tenant_id, [NewJob("r", name) for name in ages])
    by_task = dict(zip(ages, ids, strict=True))
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        for task, (state, days, _) in ages.items():
            finished = now - timedelta(days=days) if days is not None else None
            await session.execute(
                update(Job)
                .where(Job.id == by_task[task])
                .values(
                    state=state,
                    finished_at=finished,
                    created_at=now - timedelta(days=40),
                    run_at=now - timedelta(days=40),
                )
            )
    batches = []
    while True:
        async with database.session() as session:
            deleted = await prune(session, completed_days=7, discarded_days=30, batch=2, now=now)
        batches.append(deleted)
        if deleted < 2:
            break
    assert sum(batches) >= 4  # (PostgreSQL: other tests' old jobs may go too)
    assert max(batches) == 2  # never more than a batch at once
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        left = set(await session.scalars(select(Job.task)))
    assert left == {task for task, (_, _, kept) in ages.items() if kept}


async def test_zero_days_keeps_for_ever(database: Database, tenant_id: str) -> None:
    now = utcnow()
    async with database.session() as session:
        (job_id,) = await enqueue_many(session, tenant_id, [NewJob("r", "t")])
        bind_tenant(session, tenant_id)
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.completed, finished_at=now - timedelta(days=3000))
        )
    async with database.session() as session:
        assert await prune(session, completed_days=0, discarded_days=0, now=now) == 0

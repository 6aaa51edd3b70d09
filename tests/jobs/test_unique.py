"""Unique jobs (a key, a period, the states that count) and batch enqueue, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from keel.core.db import Database, utcnow
from keel.core.errors import ValidationFailed
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job, JobState
from keel.jobs.service import NewJob, claim, complete, enqueue, enqueue_many


async def _jobs_with_key(database: Database, tenant_id: str, key: str) -> int:
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        count = await session.scalar(
            select(func.count()).select_from(Job).where(Job.unique_key == key)
        )
        return int(count or 0)


async def test_a_key_enqueued_a_hundred_times_concurrently_makes_one_job(
    database: Database, tenant_id: str
) -> None:
    async def enqueue_once() -> tuple[str, bool]:
        async with database.session() as session:
            enqueued = await enqueue(session, tenant_id, "unique", "t", unique_key="report-7")
            return enqueued.job.id, enqueued.created

    answers = await asyncio.gather(*(enqueue_once() for _ in range(100)))
    assert len({job_id for job_id, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1  # 99 were told they were duplicates
    assert await _jobs_with_key(database, tenant_id, "report-7") == 1


async def test_by_default_a_key_counts_until_its_job_ends(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        first = await enqueue(session, tenant_id, "unique", "t", unique_key="k")
        again = await enqueue(session, tenant_id, "unique", "t", unique_key="k")
    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    async with database.session() as session:
        (held,) = await claim(session, tenant_id, ["unique"], worker_id="w")
        running = await enqueue(session, tenant_id, "unique", "t", unique_key="k")
        assert not running.created  # running still counts
        await complete(session, tenant_id, held.job_id, held.lease_token)
    async with database.session() as session:
        after = await enqueue(session, tenant_id, "unique", "t", unique_key="k")
    assert after.created
    assert after.job.id != first.job.id


async def test_chosen_states_let_a_new_job_in_while_one_runs(
    database: Database, tenant_id: str
) -> None:
    waiting = ["available", "scheduled"]
    async with database.session() as session:
        await enqueue(session, tenant_id, "u", "t", unique_key="k", unique_states=waiting)
        duplicate = await enqueue(
            session, tenant_id, "u", "t", unique_key="k", unique_states=waiting
        )
        assert not duplicate.created
        await claim(session, tenant_id, ["u"], worker_id="w")
    async with database.session() as session:
        second = await enqueue(session, tenant_id, "u", "t", unique_key="k", unique_states=waiting)
    assert second.created  # the first runs: a waiting one may be added


async def test_a_period_counts_ended_jobs_created_within_it(
    database: Database, tenant_id: str
) -> None:
    every_state = list(JobState)
    async with database.session() as session:
        first = await enqueue(
            session,
            tenant_id,
            "u",
            "t",
            unique_key="daily",
            unique_period_seconds=3600,
            unique_states=every_state,
        )
        (held,) = await claim(session, tenant_id, ["u"], worker_id="w")
        await complete(session, tenant_id, held.job_id, held.lease_token)
    async with database.session() as session:
        same_hour = await enqueue(
            session,
            tenant_id,
            "u",
            "t",
            unique_key="daily",
            unique_period_seconds=3600,
            unique_states=every_state,
        )
    assert not same_hour.created  # completed, but within the hour
    assert same_hour.job.state == JobState.completed
    async with database.session() as session:  # an hour and a bit later
        bind_tenant(session, tenant_id)
        await session.execute(
            update(Job)
            .where(Job.id == first.job.id)
            .values(created_at=utcnow() - timedelta(hours=1, minutes=1))
        )
    async with database.session() as session:
        next_hour = await enqueue(
            session,
            tenant_id,
            "u",
            "t",
            unique_key="daily",
            unique_period_seconds=3600,
            unique_states=every_state,
        )
    assert next_hour.created


async def test_unique_options_are_checked(database: Database, tenant_id: str) -> None:
    async with database.session() as session:
        with pytest.raises(ValidationFailed, match="unique states"):
            await enqueue(session, tenant_id, "u", "t", unique_key="k", unique_states=["done"])
        with pytest.raises(ValidationFailed, match="need a unique key"):
            await enqueue(session, tenant_id, "u", "t", unique_period_seconds=60)
        with pytest.raises(ValidationFailed, match="positive"):
            await enqueue(session, tenant_id, "u", "t", unique_key="k", unique_period_seconds=0)


async def test_ten_thousand_jobs_enqueue_in_one_call(database: Database, tenant_id: str) -> None:
    jobs = [NewJob("bulk", "t", [n], priority=n % 5) for n in range(10_000)]
    async with database.session() as session:
        ids = await enqueue_many(session, tenant_id, jobs)
    assert len(set(ids)) == 10_000
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        count = await session.scalar(
            select(func.count()).select_from(Job).where(Job.queue == "bulk")
        )
        first = await session.get(Job, ids[0])
    assert count == 10_000
    assert first is not None
    assert first.args == [0]
    assert first.state == JobState.available


async def test_a_batch_is_validated_whole_before_anything_is_written(
    database: Database, tenant_id: str
) -> None:
    with pytest.raises(ValidationFailed, match="Queue name"):
        async with database.session() as session:
            await enqueue_many(session, tenant_id, [NewJob("fine", "t"), NewJob("no spaces", "t")])
    async with database.session() as session:
        assert await claim(session, tenant_id, ["fine"], worker_id="w") == []

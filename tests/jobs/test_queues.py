"""Queues: pause and resume, concurrency limits across concurrent claimers, rate limits over
simulated time, the overview of a tenant's queues; on SQLite and PostgreSQL. The token
bucket's arithmetic is tested directly."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from keel.core.db import Database, utcnow
from keel.core.errors import ValidationFailed
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job, JobQueue, JobState
from keel.jobs.service import (
    KEEP,
    NewJob,
    claim,
    complete,
    configure_queue,
    enqueue_many,
    get_queue_config,
    list_queues,
    pause_queue,
    resume_queue,
)
from keel.jobs.service.queues import bucket_burst, claim_allowance, refilled_tokens

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_bucket_refills_at_the_rate_up_to_a_burst_of_one_second() -> None:
    assert bucket_burst(10) == 10
    assert bucket_burst(0.2) == 1
    assert refilled_tokens(0, T0, 10, T0 + timedelta(seconds=0.35)) == pytest.approx(3.5)
    assert refilled_tokens(0, T0, 10, T0 + timedelta(seconds=60)) == 10
    assert refilled_tokens(4, T0, 10, T0 - timedelta(seconds=5)) == 4  # a clock gone back
    assert refilled_tokens(0, None, 3, T0) == 3  # never used: full
    queue = JobQueue(name="q", paused=False, rate_limit_per_second=10.0, rate_tokens=0.0)
    queue.rate_refilled_at = T0
    assert claim_allowance(queue, 0, T0 + timedelta(seconds=0.1)) == 1
    assert claim_allowance(queue, 0, T0 + timedelta(seconds=0.29)) == 2
    queue.concurrency_limit = 3
    assert claim_allowance(queue, 2, T0 + timedelta(seconds=5)) == 1
    assert claim_allowance(queue, 5, T0 + timedelta(seconds=5)) == 0
    queue.paused = True
    assert claim_allowance(queue, 0, T0 + timedelta(seconds=5)) == 0


async def test_a_paused_queue_keeps_its_jobs_until_resumed(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        await enqueue_many(session, tenant_id, [NewJob("mail", "t"), NewJob("other", "t")])
        await pause_queue(session, tenant_id, "mail")
    async with database.session() as session:
        claims = await claim(session, tenant_id, ["mail", "other"], worker_id="w", limit=5)
    assert [c.queue for c in claims] == ["other"]
    async with database.session() as session:
        config = await get_queue_config(session, tenant_id, "mail")
        assert config is not None
        assert config.paused
        await resume_queue(session, tenant_id, "mail")
    async with database.session() as session:
        (resumed,) = await claim(session, tenant_id, ["mail"], worker_id="w")
    assert resumed.queue == "mail"


async def _running(database: Database, tenant_id: str, queue: str) -> int:
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        count = await session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.queue == queue, Job.state == JobState.running)
        )
        return int(count or 0)


async def test_a_concurrency_limit_holds_across_concurrent_claimers(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        await enqueue_many(session, tenant_id, [NewJob("limited", "t", [n]) for n in range(30)])
        await configure_queue(session, tenant_id, "limited", concurrency_limit=3)
    most_running = 0
    done: list[str] = []

    async def worker(name: str, seed: int) -> None:
        nonlocal most_running
        rng = random.Random(seed)
        idle_rounds = 0
        while idle_rounds < 20:
            async with database.session() as session:
                claims = await claim(
                    session, tenant_id, ["limited"], worker_id=name, limit=rng.randint(1, 3)
                )
            if not claims:
                idle_rounds += 1
                await asyncio.sleep(0.005)
                continue
            idle_rounds = 0
            most_running = max(most_running, await _running(database, tenant_id, "limited"))
            await asyncio.sleep(rng.uniform(0, 0.01))
            for held in claims:
                async with database.session() as session:
                    await complete(session, tenant_id, held.job_id, held.lease_token)
                done.append(held.job_id)

    await asyncio.gather(*(worker(f"w{n}", n) for n in range(6)))
    assert len(done) == len(set(done)) == 30
    assert 1 <= most_running <= 3


async def test_a_rate_limit_holds_over_simulated_time(database: Database, tenant_id: str) -> None:
    """10 claims a second with a burst of 10: at most 10 + 10 t claims by second t, from two
    claimers asking for far more every 70 ms; and the limiter does not starve them."""
    start = utcnow()
    async with database.session() as session:
        await enqueue_many(session, tenant_id, [NewJob("paced", "t") for _ in range(300)])
        await configure_queue(session, tenant_id, "paced", rate_limit_per_second=10, now=start)
    claimed = 0
    for step in range(1, 101):  # seven simulated seconds
        now = start + timedelta(seconds=step * 0.07)

        async def claimer(name: str, now: datetime = now) -> int:
            async with database.session() as session:
                claims = await claim(
                    session, tenant_id, ["paced"], worker_id=name, limit=50, now=now
                )
                return len(claims)

        claimed += sum(await asyncio.gather(claimer("a"), claimer("b")))
        elapsed = (now - start).total_seconds()
        assert claimed <= 10 + 10 * elapsed + 1e-6, f"{claimed} claims after {elapsed} s"
    assert claimed >= 10 + 10 * 7 - 1  # 80 allowed in seven seconds; none lost


async def test_limits_are_set_kept_and_removed(database: Database, tenant_id: str) -> None:
    async with database.session() as session:
        queue = await configure_queue(
            session, tenant_id, "q", concurrency_limit=4, rate_limit_per_second=2.5
        )
        assert (queue.concurrency_limit, queue.rate_limit_per_second) == (4, 2.5)
        queue = await configure_queue(session, tenant_id, "q", concurrency_limit=None)
        assert (queue.concurrency_limit, queue.rate_limit_per_second) == (None, 2.5)
        queue = await configure_queue(session, tenant_id, "q", rate_limit_per_second=KEEP)
        assert queue.rate_limit_per_second == 2.5
        with pytest.raises(ValidationFailed, match="concurrency_limit"):
            await configure_queue(session, tenant_id, "q", concurrency_limit=0)
        with pytest.raises(ValidationFailed, match="rate_limit_per_second"):
            await configure_queue(session, tenant_id, "q", rate_limit_per_second=0)
        with pytest.raises(ValidationFailed, match="Queue name"):
            await pause_queue(session, tenant_id, "bad name")


async def test_the_overview_lists_configured_queues_and_jobs_by_state(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        await enqueue_many(
            session,
            tenant_id,
            [
                NewJob("a", "t"),
                NewJob("a", "t"),
                NewJob("b", "t"),
                NewJob("a", "t", run_at=utcnow() + timedelta(hours=1)),
            ],
        )
        await pause_queue(session, tenant_id, "empty")
    async with database.session() as session:
        await claim(session, tenant_id, ["b"], worker_id="w")
    async with database.session() as session:
        overview = {
            queue.name: queue
            for queue in await list_queues(session, tenant_id, now=utcnow() + timedelta(seconds=5))
        }
    assert sorted(overview) == ["a", "b", "empty"]
    assert overview["empty"].paused
    assert overview["empty"].states == {}
    a_states = overview["a"].states
    assert {state: s.count for state, s in a_states.items()} == {"available": 2, "scheduled": 1}
    assert 5 <= a_states["available"].oldest_age_seconds < 60
    assert overview["b"].states["running"].count == 1
    assert not overview["a"].paused
    assert overview["a"].concurrency_limit is None

"""The jobs engine on SQLite and PostgreSQL: enqueue, claims as leases, retries, the dead
letter queue, unique keys."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import pytest

from keel.core.db import Database, utcnow
from keel.core.errors import Conflict, ValidationFailed
from keel.core.tenancy import create_tenant
from keel.jobs.models import JobState
from keel.jobs.service import (
    MAX_BACKOFF_SECONDS,
    Backoff,
    NewJob,
    backoff_seconds,
    cancel,
    claim,
    complete,
    enqueue,
    enqueue_many,
    fail,
    get_job,
    heartbeat,
    list_jobs,
    requeue,
    requeue_dead,
    rescue_lapsed,
)
from keel.jobs.service.retry import retry_delay


async def test_claims_take_lowest_priority_value_then_earliest_run_at(
    database: Database, tenant_id: str
) -> None:
    past = utcnow() - timedelta(minutes=5)
    async with database.session() as session:
        late = (await enqueue(session, tenant_id, "default", "a", [1], priority=5)).job
        early = (
            await enqueue(session, tenant_id, "default", "a", [2], priority=5, run_at=past)
        ).job
        urgent = (await enqueue(session, tenant_id, "default", "a", [3], priority=0)).job
        future = (
            await enqueue(session, tenant_id, "default", "a", run_at=utcnow() + timedelta(hours=1))
        ).job
        other = (await enqueue(session, tenant_id, "other", "a")).job
        assert future.state == JobState.scheduled
        assert late.state == JobState.available
    async with database.session() as session:
        claims = await claim(session, tenant_id, ["default"], worker_id="w1", limit=10)
    assert [c.job_id for c in claims] == [urgent.id, early.id, late.id]
    assert all(c.attempt == 1 for c in claims)
    assert claims[0].args == [3]
    async with database.session() as session:
        assert (await get_job(session, tenant_id, late.id)).state == JobState.running
        assert (await get_job(session, tenant_id, other.id)).state == JobState.available
        assert await claim(session, tenant_id, ["default"], worker_id="w1", limit=10) == []


async def test_enqueue_many_inserts_a_batch(database: Database, tenant_id: str) -> None:
    async with database.session() as session:
        ids = await enqueue_many(
            session,
            tenant_id,
            [NewJob("bulk", "t", [n], priority=n % 3) for n in range(200)]
            + [NewJob("bulk", "t", unique_key="k"), NewJob("bulk", "t", unique_key="k")],
        )
    assert len(set(ids)) == 201  # the second "k" is the first
    async with database.session() as session:
        claims = await claim(session, tenant_id, ["bulk"], worker_id="w", limit=500)
    assert len(claims) == 201


async def test_two_concurrent_claimers_never_get_the_same_job(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        await enqueue_many(session, tenant_id, [NewJob("race", "t", [n]) for n in range(20)])

    async def claimer(worker: str) -> list[str]:
        taken: list[str] = []
        while True:
            async with database.session() as session:
                claims = await claim(session, tenant_id, ["race"], worker_id=worker, limit=3)
            if not claims:
                return taken
            taken += [c.job_id for c in claims]

    first, second = await asyncio.gather(claimer("a"), claimer("b"))
    assert not set(first) & set(second)
    assert len(first) + len(second) == 20


async def test_a_lapsed_lease_is_rescued_and_the_stale_worker_is_refused(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "lease", "t", max_attempts=3)).job
    async with database.session() as session:
        (stale,) = await claim(session, tenant_id, ["lease"], worker_id="dead", lease_seconds=1)
    async with database.session() as session:
        await rescue_lapsed(session)  # (across tenants: other tests' jobs may be rescued)
        assert (await get_job(session, tenant_id, job.id)).worker_id == "dead"  # not lapsed yet
    await asyncio.sleep(1.1)  # the worker "died": no heartbeat
    async with database.session() as session:
        assert len(await rescue_lapsed(session)) >= 1
    async with database.session() as session:
        (fresh,) = await claim(session, tenant_id, ["lease"], worker_id="alive")
    assert fresh.job_id == job.id
    assert fresh.attempt == 2
    assert fresh.lease_token != stale.lease_token

    with pytest.raises(Conflict):
        async with database.session() as session:
            await complete(session, tenant_id, job.id, stale.lease_token, result="stale")
    with pytest.raises(Conflict):
        async with database.session() as session:
            await heartbeat(session, tenant_id, job.id, stale.lease_token)
    with pytest.raises(Conflict):
        async with database.session() as session:
            await fail(session, tenant_id, job.id, stale.lease_token, "stale")
    async with database.session() as session:
        current = await get_job(session, tenant_id, job.id)
        assert current.state == JobState.running
        assert current.worker_id == "alive"
        assert current.attempt == 2
        assert current.result is None
        assert [e["attempt"] for e in current.errors] == [1]  # the lapse, not the stale fail
        await complete(session, tenant_id, job.id, fresh.lease_token, result={"ok": True})
    async with database.session() as session:
        done = await get_job(session, tenant_id, job.id)
        assert done.state == JobState.completed
        assert done.result == {"ok": True}


async def test_failures_back_off_then_the_job_is_discarded_with_its_errors(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "flaky", "t", max_attempts=2)).job
    async with database.session() as session:
        (first,) = await claim(session, tenant_id, ["flaky"], worker_id="w")
        failed = await fail(session, tenant_id, job.id, first.lease_token, "boom", "Traceback…")
        assert failed.state == JobState.retryable
        wait = (failed.run_at - utcnow()).total_seconds()
        assert 0 < wait <= backoff_seconds(1, rng=random.Random(0)) + 1.5
    async with database.session() as session:
        assert await claim(session, tenant_id, ["flaky"], worker_id="w") == []  # not due yet
    # Due now (as if the backoff had passed).
    async with database.session() as session:
        job_row = await get_job(session, tenant_id, job.id)
        job_row.run_at = utcnow() - timedelta(seconds=1)
    async with database.session() as session:
        (second,) = await claim(session, tenant_id, ["flaky"], worker_id="w")
        assert second.attempt == 2
        dead = await fail(session, tenant_id, job.id, second.lease_token, "boom again")
    assert dead.state == JobState.discarded
    assert dead.finished_at is not None
    assert [(e["attempt"], e["error"]) for e in dead.errors] == [(1, "boom"), (2, "boom again")]
    assert dead.errors[0]["traceback"] == "Traceback…"

    async with database.session() as session:
        assert await requeue_dead(session, tenant_id, [job.id]) == 1
    async with database.session() as session:
        (again,) = await claim(session, tenant_id, ["flaky"], worker_id="w")
        assert again.job_id == job.id
        assert again.attempt == 1


async def test_a_unique_key_enqueued_concurrently_makes_one_job(
    database: Database, tenant_id: str
) -> None:
    async def enqueue_once() -> str:
        async with database.session() as session:
            job = (await enqueue(session, tenant_id, "unique", "t", unique_key="report-7")).job
            return job.id

    ids = await asyncio.gather(*(enqueue_once() for _ in range(20)))
    assert len(set(ids)) == 1
    # A finished job frees the key.
    async with database.session() as session:
        (held,) = await claim(session, tenant_id, ["unique"], worker_id="w")
        await complete(session, tenant_id, held.job_id, held.lease_token)
    assert await enqueue_once() != ids[0]


async def test_heartbeat_extends_the_lease_and_reports_a_cancel(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "beat", "t")).job
    async with database.session() as session:
        (held,) = await claim(session, tenant_id, ["beat"], worker_id="w", lease_seconds=5)
    with pytest.raises(Conflict):
        async with database.session() as session:
            await heartbeat(session, tenant_id, job.id, "not-the-token")
    async with database.session() as session:
        beat = await heartbeat(session, tenant_id, job.id, held.lease_token, lease_seconds=120)
    assert not beat.cancel_requested
    assert beat.lease_expires_at is not None
    assert beat.lease_expires_at > held.lease_expires_at
    async with database.session() as session:
        await cancel(session, tenant_id, job.id)
    async with database.session() as session:
        beat = await heartbeat(session, tenant_id, job.id, held.lease_token)
    assert beat.cancel_requested
    assert beat.lease_expires_at is None
    with pytest.raises(Conflict):
        async with database.session() as session:
            await complete(session, tenant_id, job.id, held.lease_token)


def test_backoff_grows_as_the_fourth_power_with_bounded_jitter() -> None:
    rng = random.Random(42)
    for attempt in (1, 2, 3, 5):
        wait = backoff_seconds(attempt, rng=rng)
        assert attempt**4 <= wait <= attempt**4 * 1.1 + 1
    assert backoff_seconds(20, rng=rng) == MAX_BACKOFF_SECONDS
    assert backoff_seconds(3, rng=random.Random(7)) == backoff_seconds(3, rng=random.Random(7))
    with pytest.raises(ValueError, match="attempts count from 1"):
        backoff_seconds(0)


async def test_a_worker_picks_the_retry_wait_or_discards_and_a_job_its_backoff(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "pick", "t", max_backoff_seconds=5)).job
        other = (await enqueue(session, tenant_id, "pick", "t")).job
    async with database.session() as session:
        held = {
            c.job_id: c for c in await claim(session, tenant_id, ["pick"], worker_id="w", limit=2)
        }
        capped = await fail(session, tenant_id, job.id, held[job.id].lease_token, "e")
        now = utcnow()
        soon = await fail(
            session, tenant_id, other.id, held[other.id].lease_token, "e", retry_in_seconds=120
        )
    assert capped.state == JobState.retryable
    assert (capped.run_at - now).total_seconds() <= 5  # its own cap, not attempt⁴'s hour
    assert 119 <= (soon.run_at - now).total_seconds() <= 121
    async with database.session() as session:
        for row in (
            await get_job(session, tenant_id, job.id),
            await get_job(session, tenant_id, other.id),
        ):
            row.run_at = utcnow() - timedelta(seconds=1)
    async with database.session() as session:
        held = {
            c.job_id: c for c in await claim(session, tenant_id, ["pick"], worker_id="w", limit=2)
        }
        dead = await fail(
            session, tenant_id, job.id, held[job.id].lease_token, "bad input", discard=True
        )
        with pytest.raises(ValidationFailed, match="not both"):
            await fail(
                session,
                tenant_id,
                other.id,
                held[other.id].lease_token,
                "e",
                retry_in_seconds=1,
                discard=True,
            )
    assert dead.state == JobState.discarded
    assert dead.attempt == 2 < dead.max_attempts


def test_a_job_backoff_scales_and_caps_the_curve() -> None:
    fast = Backoff(base_seconds=0.1, max_seconds=10)
    assert 0.1 <= retry_delay(1, fast, rng=random.Random(1)) <= 0.1 * 1.1 + 0.1
    assert retry_delay(5, fast) == 10
    assert retry_delay(20, None) == MAX_BACKOFF_SECONDS
    with pytest.raises(ValidationFailed):
        Backoff(base_seconds=10, max_seconds=5)


async def test_progress_is_kept_and_handed_to_the_next_attempt(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "prog", "t", max_attempts=3)).job
    async with database.session() as session:
        (held,) = await claim(session, tenant_id, ["prog"], worker_id="w")
        assert held.progress is None
        await heartbeat(session, tenant_id, job.id, held.lease_token, progress={"done": 40})
        await fail(session, tenant_id, job.id, held.lease_token, "e", retry_in_seconds=0)
    async with database.session() as session:
        (again,) = await claim(session, tenant_id, ["prog"], worker_id="w")
        assert again.progress == {"done": 40}
        await heartbeat(session, tenant_id, job.id, again.lease_token)  # no progress: kept
        done = await complete(session, tenant_id, job.id, again.lease_token, result=[1, 2])
    assert done.progress == {"done": 40}
    assert done.result == [1, 2]


async def test_a_cancelled_job_is_requeued_and_its_old_lease_refused(
    database: Database, tenant_id: str
) -> None:
    async with database.session() as session:
        job = (await enqueue(session, tenant_id, "rq", "t")).job
        waiting = (await enqueue(session, tenant_id, "rq-other", "t")).job
    async with database.session() as session:
        (held,) = await claim(session, tenant_id, ["rq"], worker_id="w")
        await cancel(session, tenant_id, job.id)
        again = await requeue(session, tenant_id, job.id)
        assert again.state == JobState.available
        assert again.attempt == 0
        with pytest.raises(Conflict, match="only a discarded or cancelled"):
            await requeue(session, tenant_id, waiting.id)
    with pytest.raises(Conflict):
        async with database.session() as session:
            await heartbeat(session, tenant_id, job.id, held.lease_token)
    async with database.session() as session:
        page = await list_jobs(session, tenant_id, queue="rq")
        assert [j.id for j in page] == [job.id]
        later = await list_jobs(session, tenant_id, state="available", after=job.id)
        assert [j.id for j in later] == [waiting.id]
        assert await requeue_dead(session, tenant_id, queue="rq") == 0


async def test_requeueing_every_dead_job_touches_the_tenants_own_only(
    database: Database, tenant_id: str
) -> None:
    """One UPDATE for the whole dead letter queue: it must stay inside the tenant."""
    async with database.session() as session:
        other = (await create_tenant(session, f"jobs-{uuid.uuid4().hex[:12]}")).id

    async def one_dead(tenant: str, queue: str) -> str:
        async with database.session() as session:
            job = (await enqueue(session, tenant, queue, "t", max_attempts=1)).job
        async with database.session() as session:
            (lease,) = await claim(session, tenant, [queue], worker_id="w")
            await fail(session, tenant, job.id, lease.lease_token, "boom")
        return job.id

    mine = [await one_dead(tenant_id, "a"), await one_dead(tenant_id, "b")]
    theirs = await one_dead(other, "a")
    async with database.session() as session:
        assert await requeue_dead(session, tenant_id) == 2
    async with database.session() as session:
        states = [(await get_job(session, tenant_id, job_id)).state for job_id in mine]
        assert states == [JobState.available, JobState.available]
        assert (await get_job(session, other, theirs)).state == JobState.discarded

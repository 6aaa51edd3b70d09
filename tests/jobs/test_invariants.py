"""The engine's invariants (``keel.jobs.service.claims``), checked after every call of random
sequences of enqueues, claims, heartbeats, acks, failures, cancels, requeues, rescues and
limit changes, and a worker's round of acks and claim in one call to the database
(:func:`~keel.jobs.service.fetch_at_once`), on SQLite and PostgreSQL:

- a job is in exactly one state, and the state agrees with its lease and end;
- a lease token is current for at most one attempt: every claim issues a new one, and a call
  naming a token that is not current is refused and changes nothing;
- a job in a final state never changes, except by requeue;
- the running jobs of a queue with a concurrency limit never outnumber the limit (lowering
  it stops no running job: no claim takes one until they are fewer than the new limit).

A failure names the seed and the step; ``SEEDS`` replays it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from keel.core.db import Database, utcnow
from keel.core.errors import Conflict
from keel.core.tenancy import bind_tenant
from keel.jobs.models import FINAL_STATES, Job, JobState
from keel.jobs.service import (
    Ack,
    NewJob,
    cancel,
    claim,
    complete,
    configure_queue,
    enqueue,
    enqueue_many,
    fail,
    fetch_at_once,
    heartbeat,
    requeue,
    rescue_lapsed,
)

SEEDS = (18, 1819)
STEPS = 120
QUEUES = ("limited", "free")
_FIELDS = ("state", "attempt", "lease_token", "result", "errors", "run_at", "finished_at")


@dataclass
class Model:
    """What the test knows: every token issued, by job, and which one is current."""

    issued: dict[str, list[str]] = field(default_factory=dict)
    current: dict[str, str | None] = field(default_factory=dict)
    limit: int = 2
    #: The most jobs of "limited" that may run now: the limit, or more while a lowered
    #: limit's running jobs end.
    ceiling: int = 2

    def stale_or_current(self, rng: random.Random, job_id: str) -> str:
        current = self.current.get(job_id)
        if current is not None and rng.random() < 0.7:
            return current
        return rng.choice(self.issued.get(job_id) or ["never-issued"])


async def _jobs(database: Database, tenant_id: str) -> dict[str, Job]:
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        return {job.id: job for job in await session.scalars(select(Job))}


def _snapshot(job: Job) -> tuple[Any, ...]:
    return tuple(getattr(job, name) for name in _FIELDS)


def _check(jobs: dict[str, Job], model: Model, where: str) -> None:
    for job in jobs.values():
        assert job.state in set(JobState), where
        if job.state == JobState.running:
            assert job.lease_token is not None, where
            assert job.lease_token == model.current.get(job.id), where
        if job.state in (JobState.available, JobState.scheduled, JobState.retryable):
            assert job.lease_token is None, where
            assert job.finished_at is None, where
        if job.state in FINAL_STATES:
            assert job.finished_at is not None, where
    running = sum(
        1 for job in jobs.values() if job.queue == "limited" and job.state == JobState.running
    )
    assert running <= model.ceiling, f"{where}: {running} running, limit {model.limit}"
    model.ceiling = max(model.limit, running)
    every_token = [token for tokens in model.issued.values() for token in tokens]
    assert len(every_token) == len(set(every_token)), where


async def _step(
    database: Database, tenant_id: str, rng: random.Random, model: Model, jobs: dict[str, Job]
) -> tuple[str, str | None]:
    """One random call; returns its name and the job it requeued, if any."""
    op = rng.choices(
        [
            "enqueue",
            "claim",
            "heartbeat",
            "complete",
            "fail",
            "cancel",
            "requeue",
            "rescue",
            "limit",
            "round",
        ],
        weights=[4, 5, 2, 4, 3, 1, 1, 1, 1, 3],
    )[0]
    ids = sorted(jobs)
    job_id = rng.choice(ids) if ids else None
    if op == "round":
        await _round(database, tenant_id, rng, model, jobs)
        return op, None
    async with database.session() as session:
        if op == "enqueue":
            if rng.random() < 0.3:
                await enqueue(
                    session, tenant_id, rng.choice(QUEUES), "t", unique_key=f"k{rng.randint(0, 3)}"
                )
            else:
                later = utcnow() + timedelta(hours=1)
                news = [
                    NewJob(
                        rng.choice(QUEUES),
                        "t",
                        max_attempts=rng.choice([1, 2, 20]),
                        run_at=later if rng.random() < 0.1 else None,
                    )
                    for _ in range(rng.randint(1, 4))
                ]
                await enqueue_many(session, tenant_id, news)
        elif op == "claim":
            queues = rng.sample(QUEUES, rng.randint(1, 2))
            for held in await claim(
                session, tenant_id, queues, worker_id="w", limit=rng.randint(1, 3)
            ):
                model.issued.setdefault(held.job_id, []).append(held.lease_token)
                model.current[held.job_id] = held.lease_token
        elif op == "limit":
            model.limit = rng.choice([1, 2, 3])
            await configure_queue(session, tenant_id, "limited", concurrency_limit=model.limit)
        elif op == "rescue":
            # Every lease lapses (from the database's point of view, two minutes from now).
            for job in await rescue_lapsed(session, now=utcnow() + timedelta(minutes=2)):
                if job.tenant_id == tenant_id:
                    model.current[job.id] = None
        elif job_id is not None:
            return await _job_step(session, tenant_id, rng, model, jobs[job_id], op)
    return op, None


async def _round(
    database: Database, tenant_id: str, rng: random.Random, model: Model, jobs: dict[str, Job]
) -> None:
    """A worker's round in one call to the database: acks naming current or stale tokens of
    any queue's jobs, and a claim of one queue. Exactly the acks whose job runs on that queue
    under their token are completed; the others are left unchanged for the unit-of-work
    path."""
    queue = rng.choice(QUEUES)
    chosen = rng.sample(sorted(jobs), min(len(jobs), rng.randint(0, 4)))
    acks = [Ack(job_id, model.stale_or_current(rng, job_id), {"n": 1}) for job_id in chosen]
    fetched = await fetch_at_once(
        database, tenant_id, queue, acks, worker_id="w", limit=rng.randint(1, 3)
    )
    completable = {
        ack.job_id
        for ack in acks
        if jobs[ack.job_id].queue == queue
        and jobs[ack.job_id].state == JobState.running
        and jobs[ack.job_id].lease_token == ack.lease_token
    }
    assert {job.job_id for job in fetched.acked} == completable
    assert {ack.job_id for ack in fetched.left} == set(chosen) - completable
    assert fetched.closed == (queue == "limited")
    assert not (fetched.closed and fetched.claims)
    for job_id in completable:
        model.current[job_id] = None
    for held in fetched.claims:
        assert held.queue == queue
        model.issued.setdefault(held.job_id, []).append(held.lease_token)
        model.current[held.job_id] = held.lease_token


async def _job_step(
    session: Any, tenant_id: str, rng: random.Random, model: Model, job: Job, op: str
) -> tuple[str, str | None]:
    if op == "cancel":
        await cancel(session, tenant_id, job.id)
        return op, None
    if op == "requeue":
        try:
            await requeue(session, tenant_id, job.id)
        except Conflict:
            assert job.state not in (JobState.discarded, JobState.cancelled)
            return op, None
        model.current[job.id] = None
        return op, job.id
    token = model.stale_or_current(rng, job.id)
    is_current = token == model.current.get(job.id) and job.lease_token == token
    try:
        if op == "heartbeat":
            beat = await heartbeat(session, tenant_id, job.id, token, lease_seconds=60)
            assert beat.cancel_requested == (job.state == JobState.cancelled)
        elif op == "complete":
            await complete(session, tenant_id, job.id, token, result={"by": token[:6]})
            model.current[job.id] = None
        else:
            retry_in = rng.choice([0.0, None])
            await fail(
                session,
                tenant_id,
                job.id,
                token,
                "boom",
                retry_in_seconds=retry_in,
                discard=retry_in is None and rng.random() < 0.3,
            )
            model.current[job.id] = None
    except Conflict:
        # A token not current (or a cancelled job's ack or failure) is refused.
        assert not is_current or job.state == JobState.cancelled, (op, job.state)
        return op, None
    assert is_current, f"{op} accepted a token that is not current"
    return op, None


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_sequences_keep_the_invariants(
    database: Database, tenant_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    model = Model()
    async with database.session() as session:
        await configure_queue(session, tenant_id, "limited", concurrency_limit=model.limit)
    jobs = await _jobs(database, tenant_id)
    seen: set[str] = set()
    for step in range(STEPS):
        final_before = {
            job_id: _snapshot(job) for job_id, job in jobs.items() if job.state in FINAL_STATES
        }
        op, requeued = await _step(database, tenant_id, rng, model, jobs)
        jobs = await _jobs(database, tenant_id)
        where = f"seed {seed}, step {step} ({op})"
        _check(jobs, model, where)
        seen |= {job.state for job in jobs.values()}
        for job_id, before in final_before.items():
            if job_id != requeued:
                assert _snapshot(jobs[job_id]) == before, f"{where}: final job {job_id} changed"
    assert seen == set(JobState), f"seed {seed} explored too little: {seen}"

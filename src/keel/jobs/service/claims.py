"""Claims are leases: fetch, heartbeat, complete, fail, and the rescue of lapsed leases.

A claim gives the job a fresh random ``lease_token``; every later call of the worker names it,
and one that is not the job's current token (compared in constant time) is refused with
:class:`~keel.core.errors.Conflict` and changes nothing: a worker whose lease lapsed and was
taken over can neither extend it nor overwrite the new attempt's outcome.

On PostgreSQL the claim reads with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take
different jobs without waiting on one another. SQLite has no row locks: the claim first
takes the database's write lock (:func:`~keel.core.sqlite.hold_write_lock`), so claims take
turns and each reads what the one before it committed.

**Queues.** A claim takes nothing from a paused queue. A queue with a concurrency or rate
limit is claimed from under the lock of its :class:`~keel.jobs.models.JobQueue` row
(``FOR UPDATE``; SQLite's write lock): the claim counts the queue's running jobs and refills
its token bucket while no other claim of that queue can, and takes at most
``concurrency_limit - running`` jobs and at most the whole tokens in the bucket. Only a claim
makes a job running, so the count cannot grow behind the lock's back. Unlimited queues are
claimed without that lock.

**Order.** The lowest ``priority`` value first; among equal priorities, the queue named first
in the claim's list, then the earliest ``run_at``.

**Invariants** (``tests/jobs/test_invariants.py`` checks them after every call of random
sequences):

- a job is in exactly one state;
- a lease token is current for at most one attempt: each claim issues a fresh one, and a call
  naming any other is refused with :class:`~keel.core.errors.Conflict`, changing nothing;
- a job in a final state (completed, discarded, cancelled) never changes, except by an
  explicit requeue;
- the running jobs of a queue with a concurrency limit never outnumber the limit (a
  cancelled job whose worker is still stopping no longer counts).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import bindparam, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import CLAIMABLE, Job, JobQueue, JobState
from keel.jobs.service.queues import claim_allowance, take_tokens
from keel.jobs.service.retry import Backoff, retry_delay

if TYPE_CHECKING:
    from sqlalchemy import Table

#: Jobs one rescue sweep takes at most (the next sweep takes the rest).
RESCUE_BATCH = 500


@dataclass(frozen=True)
class Claim:
    """A job a worker holds until ``lease_expires_at`` (unless it heartbeats)."""

    job_id: str
    queue: str
    task: str
    args: Any
    attempt: int
    max_attempts: int
    timeout_seconds: int
    lease_token: str
    lease_expires_at: datetime
    #: What the previous attempt last reported, if anything (a resumable task may use it).
    progress: Any = None


@dataclass(frozen=True)
class HeartbeatResult:
    """``lease_expires_at`` is the extended lease, or ``None`` when the job was cancelled
    meanwhile (``cancel_requested``): the worker should stop it."""

    cancel_requested: bool
    lease_expires_at: datetime | None


def _error_entry(attempt: int, at: datetime, error: str, traceback: str | None) -> dict[str, Any]:
    return {"attempt": attempt, "at": at.isoformat(), "error": error, "traceback": traceback}


def _check_lease_seconds(lease_seconds: float) -> None:
    if lease_seconds <= 0:
        raise ValidationFailed("lease_seconds is positive.")


async def _limited_queues(
    session: AsyncSession, tenant_id: str, names: Sequence[str]
) -> tuple[set[str], dict[str, JobQueue]]:
    """The paused queues among ``names``, and the limited ones, their rows locked until the
    transaction ends (in name order, so two claims never wait on each other in a cycle)."""
    # A Core read of the four columns, the tenant named: every claim makes it, and most
    # queues have no row at all (no pause, no limit), so no ORM object is needed to say so.
    queues = cast("Table", JobQueue.__table__)
    configs = (
        await session.execute(
            select(
                queues.c.id,
                queues.c.name,
                queues.c.paused,
                queues.c.concurrency_limit,
                queues.c.rate_limit_per_second,
            )
            .where(queues.c.tenant_id == tenant_id, queues.c.name.in_(list(names)))
            .execution_options(all_tenants=True)
        )
    ).all()
    paused = {config.name for config in configs if config.paused}
    limited_ids = [
        config.id
        for config in configs
        if not config.paused
        and (config.concurrency_limit is not None or config.rate_limit_per_second is not None)
    ]
    if not limited_ids:
        return paused, {}
    locked = list(
        await session.scalars(
            select(JobQueue)
            .where(JobQueue.id.in_(limited_ids))
            .order_by(JobQueue.name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    paused |= {config.name for config in locked if config.paused}  # paused meanwhile
    return paused, {config.name: config for config in locked if not config.paused}


async def _running_count(session: AsyncSession, queue: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.queue == queue, Job.state == JobState.running)
    )
    return int(count or 0)


async def _candidates(
    session: AsyncSession, queues: Sequence[str], order: Sequence[str], now: datetime, limit: int
) -> list[Job]:
    """Up to ``limit`` due jobs of ``queues``, locked (skipping those locked already), in
    claim order."""
    return list(
        await session.scalars(
            select(Job)
            .where(
                Job.queue.in_(list(queues)),
                CLAIMABLE,
                Job.run_at <= now,
            )
            .order_by(
                Job.priority,
                *(
                    # One queue: the order of its index (ix_jobs_claimable), read from the top.
                    ()
                    if len(queues) == 1
                    else (case({name: place for place, name in enumerate(order)}, value=Job.queue),)
                ),
                Job.run_at,
                Job.id,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )


def _claim_order(order: Sequence[str]) -> Any:
    place = {name: index for index, name in enumerate(order)}
    return lambda job: (job.priority, place[job.queue], job.run_at, job.id)


#: The columns a claim answers with, and sorts by.
_CLAIMED = ("id", "queue", "task", "args", "attempt", "max_attempts", "timeout_seconds",
            "progress", "priority", "run_at")  # fmt: skip
#: 64 hex digits from PostgreSQL's strong random generator (two version 4 UUIDs).
_PG_NEW_LEASE = (
    "replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')"
)


async def _claim_unlimited(
    session: AsyncSession,
    tenant_id: str,
    queues: Sequence[str],
    order: Sequence[str],
    now: datetime,
    limit: int,
    worker_id: str,
    expires: datetime,
) -> list[Claim]:
    """The claim of queues without limits, in as few round trips as the database allows:
    on PostgreSQL one ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``, the
    tokens drawn by the server; on SQLite (under the write lock) a read and one executemany.
    No ORM objects: a worker's fetch is the hottest path of the service."""
    jobs = cast("Table", Job.__table__)
    place = {name: index for index, name in enumerate(order)}
    candidates = (
        select(jobs.c.id)
        .where(
            jobs.c.tenant_id == tenant_id,
            jobs.c.queue.in_(list(queues)),
            CLAIMABLE,
            jobs.c.run_at <= now,
        )
        .order_by(
            jobs.c.priority,
            *(() if len(queues) == 1 else (case(place, value=jobs.c.queue),)),
            jobs.c.run_at,
            jobs.c.id,
        )
        .limit(limit)
    )
    claimed = {
        "state": JobState.running.value,
        "attempt": jobs.c.attempt + 1,
        "lease_expires_at": expires,
        "worker_id": worker_id,
        "attempted_at": now,
    }
    returned = [jobs.c[name] for name in _CLAIMED]
    if session.get_bind().dialect.name == "postgresql":
        chosen = candidates.with_for_update(skip_locked=True).subquery()
        rows = (
            await session.execute(
                update(jobs)
                .where(jobs.c.id == chosen.c.id)
                .values(**claimed, lease_token=text(_PG_NEW_LEASE))
                .returning(*returned, jobs.c.lease_token)
                .execution_options(all_tenants=True)
            )
        ).all()
    else:
        ids = list(await session.scalars(candidates.execution_options(all_tenants=True)))
        if not ids:
            return []
        tokens = {job_id: secrets.token_urlsafe(24) for job_id in ids}
        await session.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("b_id"))
            .values(**claimed, lease_token=bindparam("b_token"))
            .execution_options(all_tenants=True),
            [{"b_id": job_id, "b_token": token} for job_id, token in tokens.items()],
        )
        rows = (
            await session.execute(
                select(*returned, jobs.c.lease_token)
                .where(jobs.c.id.in_(ids))
                .execution_options(all_tenants=True)
            )
        ).all()
    rows = sorted(rows, key=lambda row: (row.priority, place[row.queue], row.run_at, row.id))
    return [
        Claim(
            row.id,
            row.queue,
            row.task,
            row.args,
            row.attempt,
            row.max_attempts,
            row.timeout_seconds,
            row.lease_token,
            expires,
            row.progress,
        )
        for row in rows
    ]


async def claim(
    session: AsyncSession,
    tenant_id: str,
    queues: Sequence[str],
    *,
    worker_id: str,
    limit: int = 1,
    lease_seconds: float = 30.0,
    now: datetime | None = None,
) -> list[Claim]:
    """Up to ``limit`` jobs due now from ``queues``, in claim order (see the module's text),
    within the queues' pauses and limits; each marked running with a fresh lease and its
    attempt counted. ``now`` is for tests that simulate time."""
    _check_lease_seconds(lease_seconds)
    if limit < 1 or not queues:
        return []
    names = list(dict.fromkeys(queues))
    bind_tenant(session, tenant_id)
    now = now or utcnow()
    await hold_write_lock(session)  # SQLite: claims take turns (no row locks)
    paused, limited = await _limited_queues(session, tenant_id, names)
    open_queues = [name for name in names if name not in paused]
    unlimited = [name for name in open_queues if name not in limited]
    expires = now + timedelta(seconds=lease_seconds)
    if not limited:  # the common case: nothing to count, no bucket to take tokens from
        if not unlimited:
            return []
        return await _claim_unlimited(
            session, tenant_id, unlimited, names, now, limit, worker_id, expires
        )
    jobs = await _candidates(session, unlimited, names, now, limit) if unlimited else []
    for name, config in limited.items():
        running = await _running_count(session, name) if config.concurrency_limit else 0
        allowance = min(limit, claim_allowance(config, running, now))
        if allowance > 0:
            jobs += await _candidates(session, [name], names, now, allowance)
    if limited:
        jobs = sorted(jobs, key=_claim_order(names))[:limit]
        for name, config in limited.items():
            take_tokens(config, sum(1 for job in jobs if job.queue == name), now)
    claims = []
    for job in jobs:
        job.state = JobState.running
        job.attempt += 1
        job.lease_token = secrets.token_urlsafe(24)
        job.lease_expires_at = expires
        job.worker_id = worker_id
        job.attempted_at = now
        claims.append(
            Claim(
                job.id,
                job.queue,
                job.task,
                job.args,
                job.attempt,
                job.max_attempts,
                job.timeout_seconds,
                job.lease_token,
                expires,
                job.progress,
            )
        )
    await session.flush()
    return claims


async def release(session: AsyncSession, tenant_id: str, claims: Sequence[Claim]) -> int:
    """Give back first attempts nobody started (a fetch handed them went away before it
    could answer): available again, the attempt not counted, the lease ended. A claim whose
    lease is no longer current is left alone. How many were given back."""
    if not claims:
        return 0
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    jobs = cast("Table", Job.__table__)
    result = await session.execute(
        update(jobs)
        .where(
            jobs.c.tenant_id == tenant_id,
            jobs.c.id == bindparam("b_id"),
            jobs.c.lease_token == bindparam("b_token"),
            jobs.c.state == JobState.running.value,
            jobs.c.attempt == 1,
        )
        .values(
            state=JobState.available.value,
            attempt=0,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            attempted_at=None,
        )
        .execution_options(all_tenants=True),
        [{"b_id": claim.job_id, "b_token": claim.lease_token} for claim in claims],
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def _leased_job(session: AsyncSession, tenant_id: str, job_id: str, lease_token: str) -> Job:
    """The job, locked until the transaction ends, if ``lease_token`` is its current lease."""
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
    if job.lease_token is None or not hmac.compare_digest(
        job.lease_token.encode(), lease_token.encode()
    ):
        raise Conflict("The lease token is not the job's current lease (it lapsed or ended).")
    return job


async def heartbeat(
    session: AsyncSession,
    tenant_id: str,
    job_id: str,
    lease_token: str,
    *,
    lease_seconds: float = 30.0,
    progress: Any = None,
) -> HeartbeatResult:
    """Extend the lease by ``lease_seconds`` from now and keep ``progress`` (when given) as
    the job's; says so instead when the job was cancelled meanwhile (nothing is kept)."""
    _check_lease_seconds(lease_seconds)
    job = await _leased_job(session, tenant_id, job_id, lease_token)
    if job.state == JobState.cancelled:
        return HeartbeatResult(cancel_requested=True, lease_expires_at=None)
    if job.state != JobState.running:  # pragma: no cover - a token lives only while running
        raise Conflict(f"The job is {job.state}, not running.")
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    if progress is not None:
        job.progress = progress
    await session.flush()
    return HeartbeatResult(cancel_requested=False, lease_expires_at=job.lease_expires_at)


def _end_lease(job: Job) -> None:
    job.lease_token = None
    job.lease_expires_at = None


async def complete(
    session: AsyncSession, tenant_id: str, job_id: str, lease_token: str, result: Any = None
) -> Job:
    """The attempt succeeded: the job is completed with ``result``."""
    job = await _leased_job(session, tenant_id, job_id, lease_token)
    if job.state != JobState.running:
        raise Conflict(f"The job is {job.state}, not running.")
    now = utcnow()
    job.state = JobState.completed
    job.result = result
    job.finished_at = now
    _end_lease(job)
    await session.flush()
    return job


@dataclass(frozen=True)
class Ack:
    """One job of :func:`complete_many`."""

    job_id: str
    lease_token: str
    result: Any = None


@dataclass(frozen=True)
class AckedJob:
    """A job :func:`complete_many` completed: what the metrics need of it."""

    job_id: str
    queue: str
    attempted_at: datetime | None
    finished_at: datetime


@dataclass(frozen=True)
class RefusedAck:
    """An ack :func:`complete_many` refused, with the status a single ack would have had."""

    job_id: str
    status: int
    detail: str


@dataclass(frozen=True)
class AckOutcome:
    acked: list[AckedJob]
    refused: list[RefusedAck]


async def complete_many(
    session: AsyncSession,
    tenant_id: str,
    acks: Sequence[Ack],
    *,
    may_work: Any = None,
) -> AckOutcome:
    """Complete many attempts in two statements: read and lock the jobs, then update those
    whose token is current. Each ack stands alone: a stale token (409), an unknown job (404)
    or, when ``may_work(queue)`` says no, a queue the caller may not work (403) refuses that
    ack and no other, changing nothing of its job. The same rules as :func:`complete`."""
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    wanted = {ack.job_id: ack for ack in acks}
    rows = (
        await session.execute(
            select(Job.id, Job.queue, Job.state, Job.lease_token, Job.attempted_at)
            .where(Job.id.in_(list(wanted)))
            .with_for_update()
        )
    ).all()
    found = {row.id: row for row in rows}
    now = utcnow()
    acked: list[AckedJob] = []
    refused: list[RefusedAck] = []
    updates: list[dict[str, Any]] = []
    for job_id, ack in wanted.items():
        row = found.get(job_id)
        if row is None:
            refused.append(RefusedAck(job_id, 404, f"No job {job_id!r}."))
        elif may_work is not None and not may_work(row.queue):
            refused.append(
                RefusedAck(job_id, 403, f"This needs the permission jobs:{row.queue}:work.")
            )
        elif row.lease_token is None or not hmac.compare_digest(
            row.lease_token.encode(), ack.lease_token.encode()
        ):
            refused.append(
                RefusedAck(job_id, 409, "The lease token is not the job's current lease.")
            )
        elif row.state != JobState.running:
            refused.append(RefusedAck(job_id, 409, f"The job is {row.state}, not running."))
        else:
            updates.append({"b_id": job_id, "b_result": ack.result})
            acked.append(AckedJob(job_id, row.queue, row.attempted_at, now))
    if updates:
        # One executemany on the table (the rows were read, locked and checked above, in the
        # tenant's scope; the tenant is in the criteria again all the same).
        jobs = cast("Table", Job.__table__)
        await session.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("b_id"), jobs.c.tenant_id == tenant_id)
            .values(
                state=JobState.completed.value,
                result=bindparam("b_result", type_=jobs.c.result.type),
                finished_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
            .execution_options(all_tenants=True),
            updates,
        )
    return AckOutcome(acked, refused)


def _retry_or_discard(
    job: Job,
    now: datetime,
    error: str,
    traceback: str | None,
    *,
    retry_in_seconds: float | None = None,
    discard: bool = False,
) -> None:
    """After a failed or lapsed attempt: retryable after the backoff (or ``retry_in_seconds``),
    or discarded (the dead letter queue) when it was the last attempt or ``discard`` says
    so; the error is appended either way."""
    job.errors = [*job.errors, _error_entry(job.attempt, now, error, traceback)]
    _end_lease(job)
    if discard or job.attempt >= job.max_attempts:
        job.state = JobState.discarded
        job.finished_at = now
    else:
        job.state = JobState.retryable
        wait = retry_in_seconds
        if wait is None:
            wait = retry_delay(job.attempt, Backoff.from_json(job.backoff))
        job.run_at = now + timedelta(seconds=wait)


async def fail(
    session: AsyncSession,
    tenant_id: str,
    job_id: str,
    lease_token: str,
    error: str,
    traceback: str | None = None,
    *,
    retry_in_seconds: float | None = None,
    discard: bool = False,
) -> Job:
    """The attempt failed: retryable after the job's backoff (or after ``retry_in_seconds``,
    the worker's choice), or discarded when out of attempts or when ``discard`` says the
    job can never succeed."""
    if retry_in_seconds is not None and not 0 <= retry_in_seconds <= 7 * 24 * 3600:
        raise ValidationFailed("retry_in_seconds is 0 to a week.")
    if retry_in_seconds is not None and discard:
        raise ValidationFailed("A failure is retried in some seconds or discarded, not both.")
    job = await _leased_job(session, tenant_id, job_id, lease_token)
    if job.state != JobState.running:
        raise Conflict(f"The job is {job.state}, not running.")
    _retry_or_discard(
        job, utcnow(), error, traceback, retry_in_seconds=retry_in_seconds, discard=discard
    )
    await session.flush()
    return job


async def rescue_lapsed(session: AsyncSession, *, now: datetime | None = None) -> list[Job]:
    """Running jobs of every tenant whose lease lapsed (their worker died or hung) become
    available again at once, or discarded when that was their last attempt. Returns them."""
    now = now or utcnow()
    await hold_write_lock(session)
    jobs = list(
        await session.scalars(
            select(Job)
            .where(Job.state == JobState.running, Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at)
            .limit(RESCUE_BATCH)
            .with_for_update(skip_locked=True)
            .execution_options(all_tenants=True, populate_existing=True)
        )
    )
    for job in jobs:
        _retry_or_discard(job, now, "the lease lapsed (the worker stopped heartbeating)", None)
        if job.state == JobState.retryable:
            job.state = JobState.available  # a lost worker is no reason to wait
            job.run_at = now
    await session.flush()
    return jobs

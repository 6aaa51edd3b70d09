"""Claims are leases: fetch, heartbeat, complete, fail, and the rescue of lapsed leases.

A claim gives the job a fresh random ``lease_token``; every later call of the worker names it,
and one that is not the job's current token (compared in constant time) is refused with
:class:`~keel.core.errors.Conflict` and changes nothing: a worker whose lease lapsed and was
taken over can neither extend it nor overwrite the new attempt's outcome.

On PostgreSQL the claim reads with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take
different jobs without waiting on one another. SQLite has no row locks: the claim first
takes the database's write lock (:func:`~keel.core.sqlite.hold_write_lock`), so claims take
turns and each reads what the one before it committed.

**A worker's round** (the acks of its finished jobs and the claim of its next ones, on one
open queue) is one call to the database: :mod:`keel.jobs.service.rounds`.

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

from sqlalchemy import Integer, Select, bindparam, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import CLAIMABLE, Job, JobQueue, JobState
from keel.jobs.service.enqueue import QUEUE_CONFIGS
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


def check_lease_seconds(lease_seconds: float) -> None:
    if lease_seconds <= 0:
        raise ValidationFailed("lease_seconds is positive.")


async def _limited_queues(
    session: AsyncSession, tenant_id: str, names: Sequence[str]
) -> tuple[set[str], dict[str, JobQueue]]:
    """The paused queues among ``names``, and the limited ones, their rows locked until the
    transaction ends (in name order, so two claims never wait on each other in a cycle)."""
    configs = (
        await session.execute(QUEUE_CONFIGS, {"tenant_id": tenant_id, "names": list(names)})
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


_jobs = cast("Table", Job.__table__)


def _due_ids(queue_is: Any, *queue_order: Any) -> Select[Any]:
    """The ids of a claim's due jobs (locked by the caller), in claim order: the tenant, the
    time and the count are parameters (``c_tenant``, ``c_now``, ``c_limit``)."""
    return (
        select(_jobs.c.id)
        .where(
            _jobs.c.tenant_id == bindparam("c_tenant"),
            queue_is,
            CLAIMABLE,
            _jobs.c.run_at <= bindparam("c_now", type_=_jobs.c.run_at.type),
        )
        .order_by(_jobs.c.priority, *queue_order, _jobs.c.run_at, _jobs.c.id)
        .limit(bindparam("c_limit", type_=Integer))
    )


#: What a claim sets; the lease's end, the worker and the time are parameters.
_CLAIMED = {
    "state": JobState.running.value,
    "attempt": _jobs.c.attempt + 1,
    "lease_expires_at": bindparam("c_expires", type_=_jobs.c.lease_expires_at.type),
    "worker_id": bindparam("c_worker", type_=_jobs.c.worker_id.type),
    "attempted_at": bindparam("c_attempted_at", type_=_jobs.c.attempted_at.type),
}
#: The columns a claim answers with, and sorts by.
_RETURNED = [
    _jobs.c[name]
    for name in ("id", "queue", "task", "args", "attempt", "max_attempts", "timeout_seconds",
                 "progress", "priority", "run_at", "lease_token")
]  # fmt: skip
#: 64 hex digits from PostgreSQL's strong random generator (two version 4 UUIDs).
PG_NEW_LEASE = (
    "replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')"
)


def _pg_claim(due: Select[Any]) -> Any:
    """PostgreSQL's claim of the ``due`` jobs in one statement: ``UPDATE … FROM (SELECT … FOR
    UPDATE SKIP LOCKED) RETURNING``, the lease tokens drawn by the server."""
    chosen = due.with_for_update(skip_locked=True).subquery()
    return (
        update(_jobs)
        .where(_jobs.c.id == chosen.c.id)
        .values(**_CLAIMED, lease_token=text(PG_NEW_LEASE))
        .returning(*_RETURNED)
        .execution_options(all_tenants=True)
    )


#: The claim of one queue (a worker's usual fetch), built once: building, coercing and
#: computing the cache key of the statement was a large share of an idle fetch's CPU.
_DUE_IN_ONE_QUEUE = _due_ids(_jobs.c.queue == bindparam("c_queue")).execution_options(
    all_tenants=True
)
_PG_CLAIM_ONE_QUEUE = _pg_claim(_due_ids(_jobs.c.queue == bindparam("c_queue")))
#: SQLite's claim of the jobs read (under the write lock), one executemany.
_SQLITE_CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"))
    .values(**_CLAIMED, lease_token=bindparam("b_token"))
    .execution_options(all_tenants=True)
)
_CLAIMED_ROWS = (
    select(*_RETURNED)
    .where(_jobs.c.id.in_(bindparam("ids", expanding=True)))
    .execution_options(all_tenants=True)
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
    place = {name: index for index, name in enumerate(order)}
    claimed = {"c_expires": expires, "c_worker": worker_id, "c_attempted_at": now}
    wanted = {"c_tenant": tenant_id, "c_now": now, "c_limit": limit}
    is_postgres = session.get_bind().dialect.name == "postgresql"
    if len(queues) == 1:
        wanted["c_queue"] = queues[0]
        due: Any = _PG_CLAIM_ONE_QUEUE if is_postgres else _DUE_IN_ONE_QUEUE
    else:
        due = _due_ids(_jobs.c.queue.in_(list(queues)), case(place, value=_jobs.c.queue))
        due = _pg_claim(due) if is_postgres else due.execution_options(all_tenants=True)
    if is_postgres:
        rows = (await session.execute(due, {**wanted, **claimed})).all()
    else:
        ids = list(await session.scalars(due, wanted))
        if not ids:
            return []
        tokens = {job_id: secrets.token_urlsafe(24) for job_id in ids}
        await session.execute(
            _SQLITE_CLAIM,
            [{"b_id": job_id, "b_token": token, **claimed} for job_id, token in tokens.items()],
        )
        rows = (await session.execute(_CLAIMED_ROWS, {"ids": ids})).all()
    rows = sorted(rows, key=lambda row: (row.priority, place[row.queue], row.run_at, row.id))
    return [claim_of(row, row.queue, expires) for row in rows]


def claim_of(row: Any, queue: str, expires: datetime) -> Claim:
    """The claim a row of a claim's ``RETURNING`` (or read back) says."""
    return Claim(
        row.id,
        queue,
        row.task,
        row.args,
        row.attempt,
        row.max_attempts,
        row.timeout_seconds,
        row.lease_token,
        expires,
        row.progress,
    )


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
    check_lease_seconds(lease_seconds)
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
    check_lease_seconds(lease_seconds)
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


#: :func:`complete_many`'s statements, built once (the tenant, the jobs and the results are
#: their parameters): every ack of every worker runs them.
_ACKED_JOBS = (
    select(_jobs.c.id, _jobs.c.queue, _jobs.c.state, _jobs.c.lease_token, _jobs.c.attempted_at)
    .where(
        _jobs.c.tenant_id == bindparam("tenant_id"),
        _jobs.c.id.in_(bindparam("ids", expanding=True)),
    )
    .with_for_update()
    .execution_options(all_tenants=True)
)
_COMPLETE = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"), _jobs.c.tenant_id == bindparam("b_tenant"))
    .values(
        state=JobState.completed.value,
        result=bindparam("b_result", type_=_jobs.c.result.type),
        finished_at=bindparam("b_now", type_=_jobs.c.finished_at.type),
        lease_token=None,
        lease_expires_at=None,
    )
    .execution_options(all_tenants=True)
)


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
    rows = (await session.execute(_ACKED_JOBS, {"tenant_id": tenant_id, "ids": list(wanted)})).all()
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
            updates.append(
                {"b_id": job_id, "b_tenant": tenant_id, "b_result": ack.result, "b_now": now}
            )
            acked.append(AckedJob(job_id, row.queue, row.attempted_at, now))
    if updates:
        # One executemany on the table (the rows were read, locked and checked above, in the
        # tenant's scope; the tenant is in the criteria again all the same).
        await session.execute(_COMPLETE, updates)
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

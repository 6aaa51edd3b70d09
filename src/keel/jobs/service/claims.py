"""Claims are leases: fetch, heartbeat, complete, fail, and the rescue of lapsed leases.

A claim gives the job a fresh random ``lease_token``; every later call of the worker names it,
and one that is not the job's current token (compared in constant time) is refused with
:class:`~keel.core.errors.Conflict` and changes nothing: a worker whose lease lapsed and was
taken over can neither extend it nor overwrite the new attempt's outcome.

On PostgreSQL the claim reads with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take
different jobs without waiting on one another. SQLite has no row locks: the claim first
takes the database's write lock (:func:`~keel.core.sqlite.hold_write_lock`), so claims take
turns and each reads what the one before it committed.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import CLAIMABLE_STATES, Job, JobState
from keel.jobs.service.retry import backoff_seconds

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


async def claim(
    session: AsyncSession,
    tenant_id: str,
    queues: Sequence[str],
    *,
    worker_id: str,
    limit: int = 1,
    lease_seconds: float = 30.0,
) -> list[Claim]:
    """Up to ``limit`` jobs due now from ``queues``, lowest priority value first, then the
    earliest ``run_at``; each marked running with a fresh lease and its attempt counted."""
    _check_lease_seconds(lease_seconds)
    if limit < 1 or not queues:
        return []
    bind_tenant(session, tenant_id)
    now = utcnow()
    await hold_write_lock(session)  # SQLite: claims take turns (no row locks)
    jobs = list(
        await session.scalars(
            select(Job)
            .where(
                Job.queue.in_(list(queues)),
                Job.state.in_(list(CLAIMABLE_STATES)),
                Job.run_at <= now,
            )
            .order_by(Job.priority, Job.run_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )
    expires = now + timedelta(seconds=lease_seconds)
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
            )
        )
    await session.flush()
    return claims


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
) -> HeartbeatResult:
    """Extend the lease by ``lease_seconds`` from now; says so instead when the job was
    cancelled meanwhile."""
    _check_lease_seconds(lease_seconds)
    job = await _leased_job(session, tenant_id, job_id, lease_token)
    if job.state == JobState.cancelled:
        return HeartbeatResult(cancel_requested=True, lease_expires_at=None)
    if job.state != JobState.running:  # pragma: no cover - a token lives only while running
        raise Conflict(f"The job is {job.state}, not running.")
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
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


def _retry_or_discard(job: Job, now: datetime, error: str, traceback: str | None) -> None:
    """After a failed or lapsed attempt: retryable after the backoff, or discarded (the dead
    letter queue) when it was the last attempt; the error is appended either way."""
    job.errors = [*job.errors, _error_entry(job.attempt, now, error, traceback)]
    _end_lease(job)
    if job.attempt >= job.max_attempts:
        job.state = JobState.discarded
        job.finished_at = now
    else:
        job.state = JobState.retryable
        job.run_at = now + timedelta(seconds=backoff_seconds(job.attempt))


async def fail(
    session: AsyncSession,
    tenant_id: str,
    job_id: str,
    lease_token: str,
    error: str,
    traceback: str | None = None,
) -> Job:
    """The attempt failed: retryable with backoff, or discarded when out of attempts."""
    job = await _leased_job(session, tenant_id, job_id, lease_token)
    if job.state != JobState.running:
        raise Conflict(f"The job is {job.state}, not running.")
    _retry_or_discard(job, utcnow(), error, traceback)
    await session.flush()
    return job


async def rescue_lapsed(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Running jobs of every tenant whose lease lapsed (their worker died or hung) become
    available again at once, or discarded when that was their last attempt. Returns how many."""
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
    return len(jobs)

"""Putting jobs on a queue: one, or many in one bulk insert.

A ``unique_key`` is unique among a tenant's jobs that are not final (a partial unique index
on both databases): enqueueing it again while such a job exists returns that job. The check
reads first, under SQLite's write lock (``hold_write_lock``: writers take turns, so the read
stays true); on PostgreSQL a concurrent enqueue of the same key can pass the read, so the
insert runs in a savepoint and, refused by the index, returns the job that won.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import ValidationFailed
from keel.core.ids import new_id
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import FINAL_STATES, Job, JobState

DEFAULT_PRIORITY = 0
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_TIMEOUT_SECONDS = 300

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class NewJob:
    """One job of :func:`enqueue_many`, with :func:`enqueue`'s arguments."""

    queue: str
    task: str
    args: Any = field(default_factory=list)
    priority: int = DEFAULT_PRIORITY
    run_at: datetime | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    tags: Sequence[str] = ()
    unique_key: str | None = None


def _row(new: NewJob, now: datetime) -> dict[str, Any]:
    """The validated column values of ``new``."""
    if not _NAME.fullmatch(new.queue):
        raise ValidationFailed(f"Queue name {new.queue!r} is not 1-128 letters, digits, _.:-.")
    if not _NAME.fullmatch(new.task):
        raise ValidationFailed(f"Task name {new.task!r} is not 1-128 letters, digits, _.:-.")
    if new.max_attempts < 1:
        raise ValidationFailed("max_attempts is at least 1.")
    if new.timeout_seconds < 1:
        raise ValidationFailed("timeout_seconds is at least 1.")
    if new.unique_key is not None and not 0 < len(new.unique_key) <= 200:
        raise ValidationFailed("A unique key is 1-200 characters.")
    run_at = new.run_at or now
    if run_at.tzinfo is None:
        raise ValidationFailed("run_at must be timezone-aware.")
    return {
        "id": new_id(),
        "queue": new.queue,
        "task": new.task,
        "args": new.args,
        "priority": new.priority,
        "state": JobState.scheduled if run_at > now else JobState.available,
        "run_at": run_at,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "timeout_seconds": new.timeout_seconds,
        "tags": list(new.tags),
        "unique_key": new.unique_key,
        "errors": [],
        "created_at": now,
    }


async def _live_job_with_key(session: AsyncSession, unique_key: str) -> Job | None:
    return await session.scalar(
        select(Job)
        .where(Job.unique_key == unique_key, Job.state.not_in(list(FINAL_STATES)))
        .limit(1)
    )


async def enqueue(
    session: AsyncSession,
    tenant_id: str,
    queue: str,
    task: str,
    args: Any = (),
    *,
    priority: int = DEFAULT_PRIORITY,
    run_at: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    tags: Sequence[str] = (),
    unique_key: str | None = None,
) -> Job:
    """A new job (``scheduled`` when ``run_at`` is in the future, else ``available``), or the
    live job holding ``unique_key`` already."""
    bind_tenant(session, tenant_id)
    new = NewJob(
        queue,
        task,
        list(args) if isinstance(args, tuple) else args,
        priority,
        run_at,
        max_attempts,
        timeout_seconds,
        tags,
        unique_key,
    )
    row = _row(new, utcnow())
    if unique_key is None:
        job = Job(**row)
        session.add(job)
        await session.flush()
        return job
    await hold_write_lock(session)  # SQLite: the read below stays true until commit
    existing = await _live_job_with_key(session, unique_key)
    if existing is not None:
        return existing
    job = Job(**row)
    try:
        async with session.begin_nested():
            session.add(job)
            await session.flush()
    except IntegrityError:
        # PostgreSQL: a concurrent enqueue of the key committed between the read and the insert.
        winner = await _live_job_with_key(session, unique_key)
        if winner is None:  # pragma: no cover - the index refused for another reason
            raise
        return winner
    return job


async def enqueue_many(
    session: AsyncSession, tenant_id: str, jobs: Sequence[NewJob | Mapping[str, Any]]
) -> list[str]:
    """Enqueue ``jobs`` and return their ids in order. Jobs without a unique key go in one
    bulk insert; one with a key is enqueued as :func:`enqueue` does (its id may be the
    existing job's)."""
    bind_tenant(session, tenant_id)
    now = utcnow()
    news = [job if isinstance(job, NewJob) else NewJob(**job) for job in jobs]
    rows = [_row(new, now) for new in news]  # validate all before writing any
    ids: list[str] = []
    plain: list[dict[str, Any]] = []
    for new, row in zip(news, rows, strict=True):
        if new.unique_key is None:
            plain.append({**row, "tenant_id": tenant_id})
            ids.append(row["id"])
        else:
            job = await enqueue(
                session,
                tenant_id,
                new.queue,
                new.task,
                new.args,
                priority=new.priority,
                run_at=new.run_at,
                max_attempts=new.max_attempts,
                timeout_seconds=new.timeout_seconds,
                tags=new.tags,
                unique_key=new.unique_key,
            )
            ids.append(job.id)
    if plain:
        await session.execute(insert(Job), plain)
    return ids

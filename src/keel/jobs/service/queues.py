"""Queues: pause and resume, concurrency and rate limits, and the overview of a tenant's queues.

A queue exists as soon as a job names it; it gets a :class:`~keel.jobs.models.JobQueue` row
only when configured. A paused queue keeps its jobs and takes new ones, but no claim takes
any until it is resumed; jobs already running go on.

**Rate limits** are a token bucket kept on the queue's row: it refills at
``rate_limit_per_second`` up to a burst of ``max(1, rate)`` tokens, and each claimed job takes
one. A claim takes at most the whole tokens there are, under the lock of the row, so over any
window of ``t`` seconds a queue's claims number at most ``burst + rate * t`` across all
workers and replicas. A queue that was idle starts with a full bucket; so does one whose rate
was just set.

The token arithmetic is pure (:func:`refilled_tokens`, :func:`claim_allowance`) and tested
directly; :mod:`.claims` calls it under the lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import JobQueue
from keel.jobs.service.enqueue import validate_name
from keel.jobs.service.stats import StateStats, queue_stats

#: The most claims per second a rate limit may allow (beyond it, a limit limits nothing).
MAX_RATE_PER_SECOND = 100_000.0
MAX_CONCURRENCY_LIMIT = 100_000


class _Keep(Enum):
    KEEP = "keep"


#: :func:`configure_queue`'s "leave this limit as it is" (``None`` removes a limit).
KEEP: Final = _Keep.KEEP


def bucket_burst(rate_per_second: float) -> float:
    """The most tokens the bucket holds: a second's worth, and at least one."""
    return max(1.0, rate_per_second)


def refilled_tokens(
    tokens: float, refilled_at: datetime | None, rate_per_second: float, now: datetime
) -> float:
    """The tokens in the bucket at ``now``: ``tokens`` as of ``refilled_at`` plus the rate
    times the seconds since (none if the clock went back), at most the burst."""
    if refilled_at is None:
        return bucket_burst(rate_per_second)
    elapsed = max(0.0, (now - refilled_at).total_seconds())
    return min(bucket_burst(rate_per_second), tokens + elapsed * rate_per_second)


def claim_allowance(queue: JobQueue, running: int, now: datetime) -> int:
    """How many jobs of ``queue`` one claim may take at ``now`` with ``running`` of them
    running: within the concurrency limit and the whole tokens of the bucket."""
    if queue.paused:
        return 0
    allowance = math.inf
    if queue.concurrency_limit is not None:
        allowance = max(0, queue.concurrency_limit - running)
    if queue.rate_limit_per_second is not None:
        tokens = refilled_tokens(
            queue.rate_tokens, queue.rate_refilled_at, queue.rate_limit_per_second, now
        )
        # A hair of slack: 0.1 s at 10/s must be one whole token despite float arithmetic.
        allowance = min(allowance, math.floor(tokens + 1e-9))
    return int(min(allowance, MAX_CONCURRENCY_LIMIT))


def take_tokens(queue: JobQueue, taken: int, now: datetime) -> None:
    """Record a claim of ``taken`` jobs at ``now`` in the queue's bucket (if it has one)."""
    rate = queue.rate_limit_per_second
    if rate is None:
        return
    tokens = refilled_tokens(queue.rate_tokens, queue.rate_refilled_at, rate, now)
    queue.rate_tokens = max(0.0, tokens - taken)
    if queue.rate_refilled_at is None or now > queue.rate_refilled_at:
        queue.rate_refilled_at = now


async def get_queue_config(session: AsyncSession, tenant_id: str, name: str) -> JobQueue | None:
    """The queue's configuration, or ``None`` while it has none (running, unlimited)."""
    bind_tenant(session, tenant_id)
    return await session.scalar(
        select(JobQueue).where(JobQueue.name == name).execution_options(populate_existing=True)
    )


async def _locked_queue(session: AsyncSession, tenant_id: str, name: str) -> JobQueue:
    """The queue's row, created if missing, locked until the transaction ends."""
    validate_name("Queue", name)
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    query = (
        select(JobQueue)
        .where(JobQueue.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    queue = await session.scalar(query)
    if queue is not None:
        return queue
    queue = JobQueue(name=name, paused=False, rate_tokens=0.0)
    try:
        async with session.begin_nested():
            session.add(queue)
            await session.flush()
    except IntegrityError:
        # PostgreSQL: a concurrent first configuration of the queue committed its row.
        found = await session.scalar(query)
        if found is None:  # pragma: no cover - the constraint refused for another reason
            raise
        return found
    return queue


async def pause_queue(session: AsyncSession, tenant_id: str, name: str) -> JobQueue:
    """Stop claims from the queue (its running jobs go on)."""
    queue = await _locked_queue(session, tenant_id, name)
    queue.paused = True
    queue.updated_at = utcnow()
    await session.flush()
    return queue


async def resume_queue(session: AsyncSession, tenant_id: str, name: str) -> JobQueue:
    """Let claims take the queue's jobs again."""
    queue = await _locked_queue(session, tenant_id, name)
    queue.paused = False
    queue.updated_at = utcnow()
    await session.flush()
    return queue


async def configure_queue(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    concurrency_limit: int | _Keep | None = KEEP,
    rate_limit_per_second: float | _Keep | None = KEEP,
    now: datetime | None = None,
) -> JobQueue:
    """Set (a number), remove (``None``) or keep (:data:`KEEP`) each limit of the queue."""
    if isinstance(concurrency_limit, int) and not 1 <= concurrency_limit <= MAX_CONCURRENCY_LIMIT:
        raise ValidationFailed(
            f"concurrency_limit is 1 to {MAX_CONCURRENCY_LIMIT}, or null for none."
        )
    if isinstance(rate_limit_per_second, float | int) and not (
        0 < rate_limit_per_second <= MAX_RATE_PER_SECOND
    ):
        raise ValidationFailed(
            f"rate_limit_per_second is above 0, at most {MAX_RATE_PER_SECOND:g}, or null for none."
        )
    queue = await _locked_queue(session, tenant_id, name)
    now = now or utcnow()
    if not isinstance(concurrency_limit, _Keep):
        queue.concurrency_limit = concurrency_limit
    if not isinstance(rate_limit_per_second, _Keep):
        queue.rate_limit_per_second = rate_limit_per_second
        queue.rate_tokens = bucket_burst(rate_limit_per_second or 1.0)
        queue.rate_refilled_at = now
    queue.updated_at = now
    await session.flush()
    return queue


@dataclass(frozen=True)
class QueueOverview:
    """A queue of a tenant: its configuration and its jobs by state (states with none are
    left out)."""

    name: str
    paused: bool = False
    concurrency_limit: int | None = None
    rate_limit_per_second: float | None = None
    states: dict[str, StateStats] = field(default_factory=dict)


async def list_queues(
    session: AsyncSession, tenant_id: str, *, now: datetime | None = None
) -> list[QueueOverview]:
    """Every queue of the tenant that has jobs or a configuration, by name."""
    bind_tenant(session, tenant_id)
    configs = {
        queue.name: queue
        for queue in await session.scalars(
            select(JobQueue).execution_options(populate_existing=True)
        )
    }
    states: dict[str, dict[str, StateStats]] = {}
    for row in await queue_stats(session, tenant_id, now=now):
        states.setdefault(row.queue, {})[row.state] = row.stats
    overviews = []
    for name in sorted(set(configs) | set(states)):
        config = configs.get(name)
        overviews.append(
            QueueOverview(
                name,
                paused=config.paused if config else False,
                concurrency_limit=config.concurrency_limit if config else None,
                rate_limit_per_second=config.rate_limit_per_second if config else None,
                states=states.get(name, {}),
            )
        )
    return overviews

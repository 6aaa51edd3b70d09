"""How many jobs each queue holds in each state, and how old the oldest is.

"How old" counts from when the job entered a state worth watching: an available job from its
``run_at`` (how long it has waited for a worker), a running one from its claim, an ended one
from its end, a scheduled or retryable one from its creation. The numbers feed
``GET /jobs/v1/queues`` (one tenant) and the Prometheus gauges (all tenants together). One
``GROUP BY`` over the claim index; retention keeps the table it scans small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import UTCDateTime, utcnow
from keel.core.tenancy import bind_tenant
from keel.jobs.models import FINAL_STATES, Job, JobState


@dataclass(frozen=True)
class StateStats:
    count: int
    #: Seconds since the oldest job of the state entered it (see the module's text).
    oldest_age_seconds: float


@dataclass(frozen=True)
class QueueStateStats:
    queue: str
    state: str
    stats: StateStats


_SINCE = case(
    (Job.state == JobState.available, Job.run_at),
    (Job.state == JobState.running, Job.attempted_at),
    (Job.state.in_(list(FINAL_STATES)), Job.finished_at),
    else_=Job.created_at,
)


async def queue_stats(
    session: AsyncSession, tenant_id: str | None, *, now: datetime | None = None
) -> list[QueueStateStats]:
    """Per queue and state of the tenant's jobs (of every tenant's, added up, when
    ``tenant_id`` is ``None``): the count and the age of the oldest, by queue then state."""
    now = now or utcnow()
    query = select(
        Job.queue, Job.state, func.count(), func.min(_SINCE, type_=UTCDateTime())
    ).group_by(Job.queue, Job.state)
    if tenant_id is None:
        query = query.execution_options(all_tenants=True)
    else:
        bind_tenant(session, tenant_id)
    rows = []
    for queue, state, count, since in (await session.execute(query)).all():
        age = max(0.0, (now - since).total_seconds()) if since is not None else 0.0
        rows.append(QueueStateStats(queue, state, StateStats(int(count), age)))
    rows.sort(key=lambda row: (row.queue, row.state))
    return rows

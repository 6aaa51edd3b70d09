"""The storage service's own work on the jobs engine (``keel.jobs.runner`` runs it):
``storage.scan``, a job per stored version of a bucket that scans; ``storage.lifecycle``, a
sweep per tenant, enqueued by :func:`schedule_lifecycle_sweeps`.

The scheduler is a background loop of ``keel worker`` (and of ``keel serve`` on the embedded
default): every ``KEEL_STORAGE__LIFECYCLE_INTERVAL_MINUTES`` it enqueues one sweep for each
tenant holding buckets. Every replica runs the loop; the job's unique key makes one sweep per
tenant and interval of them all — an enqueue finding a sweep of the tenant created within
:data:`UNIQUE_SHARE` of an interval, whatever its state, creates nothing (the check and the
insert run under a lock of the key: ``keel.jobs.service.enqueue``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import select

from keel.core.context import AppContext, BackgroundTask
from keel.core.logging import get_logger
from keel.jobs.service import JobState, NewJob, enqueue_signalled
from keel.storage.models import StorageBucket
from keel.storage.service.runtime import LIFECYCLE, SCAN

log = get_logger(__name__)

#: The unique key of a tenant's sweep job.
LIFECYCLE_UNIQUE_KEY = "storage.lifecycle"
#: The share of an interval within which another sweep of a tenant is a duplicate: below
#: one, so that a replica's own next round (one interval later) is never taken for one.
UNIQUE_SHARE = 0.9


async def tenants_with_buckets(context: AppContext) -> list[str]:
    async with context.database.session() as session:
        found = await session.scalars(
            select(StorageBucket.tenant_id)
            .distinct()
            .order_by(StorageBucket.tenant_id)
            .execution_options(all_tenants=True)
        )
        return list(found)


async def enqueue_lifecycle_sweeps(context: AppContext) -> int:
    """One ``storage.lifecycle`` job per tenant holding buckets, unless one was created for
    it within the interval (by this process or another); how many were created."""
    interval = context.settings.storage.lifecycle_interval_minutes * 60
    created = 0
    for tenant_id in await tenants_with_buckets(context):
        async with context.database.session() as session:
            enqueued = await enqueue_signalled(
                session,
                tenant_id,
                NewJob(
                    queue=LIFECYCLE.queue,
                    task=LIFECYCLE.task_name,
                    args={},
                    max_attempts=LIFECYCLE.max_attempts,
                    timeout_seconds=LIFECYCLE.timeout_seconds,
                    unique_key=LIFECYCLE_UNIQUE_KEY,
                    unique_period_seconds=interval * UNIQUE_SHARE,
                    unique_states=list(JobState),
                ),
            )
            if enqueued.created:
                created += 1
    return created


async def schedule_lifecycle_sweeps(context: AppContext) -> None:
    """The lifecycle scheduler: :func:`enqueue_lifecycle_sweeps` every interval, for ever."""
    while True:
        try:
            created = await enqueue_lifecycle_sweeps(context)
            if created:
                log.info("storage.lifecycle.scheduled", tenants=created)
        except Exception:  # a failed round must not end the loop
            log.exception("storage.lifecycle.schedule_failed")
        await asyncio.sleep(context.settings.storage.lifecycle_interval_minutes * 60)


TASKS = (SCAN, LIFECYCLE)
#: Loops ``keel worker`` runs (and ``keel serve`` on the embedded default).
BACKGROUND: Sequence[BackgroundTask] = (schedule_lifecycle_sweeps,)

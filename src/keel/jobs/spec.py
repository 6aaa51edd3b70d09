"""The jobs service as Keel mounts and runs it: its routes, and the engine's loops.

Background work (``keel worker``, and ``keel serve`` on the embedded default), safe to run in
any number of replicas at once:

- the rescue of lapsed leases, every second, so that a job whose worker died is claimable
  again within a second or two of its lease running out;
- the firing of due cron schedules, every half second (each tick once across replicas:
  :mod:`keel.jobs.service.schedules`);
- retention, every hour, in batches (:mod:`keel.jobs.service.retention`);
- Keel's own tasks, those every enabled service declares (:mod:`keel.jobs.runner`).

Beside the API of every replica: the job signals' listener, and the refresh of the queue
gauges of ``/metrics`` (:mod:`keel.jobs.metrics`).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.logging import get_logger
from keel.core.services import ServiceSpec
from keel.jobs import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.jobs.metrics import JOBS_METRICS_RESOURCE, REFRESH_SECONDS, JobsMetrics
from keel.jobs.models import Job, JobState
from keel.jobs.runner import run_platform_tasks
from keel.jobs.service import fire_due_schedules, prune, queue_stats, rescue_lapsed
from keel.jobs.signals import (
    JOB_SIGNALS_RESOURCE,
    JobSignals,
    listen_for_job_signals,
    signal_after_commit,
)

log = get_logger(__name__)

#: How often lapsed leases are looked for: a killed worker's job runs again within a lease
#: period and this.
RESCUE_INTERVAL_SECONDS = 1.0
#: How often due schedules are looked for: a tick's job is enqueued within this of the tick.
SCHEDULE_INTERVAL_SECONDS = 0.5
#: How often ended jobs past their retention are deleted.
RETENTION_INTERVAL_SECONDS = 3600.0


async def start_jobs(context: AppContext) -> None:
    """The waiting fetches of this process, woken by :func:`listen_for_job_signals`, and the
    jobs metrics on the app's registry."""
    context.resources[JOB_SIGNALS_RESOURCE] = JobSignals()
    if JOBS_METRICS_RESOURCE not in context.resources:
        context.resources[JOBS_METRICS_RESOURCE] = JobsMetrics(context.metrics.registry)


async def jobs_ready(context: AppContext) -> None:
    """The service's table answers."""
    async with context.database.session() as session:
        await session.execute(select(Job.id).limit(1).execution_options(all_tenants=True))


async def rescue_lapsed_leases(context: AppContext) -> None:
    """Make jobs whose lease lapsed available again (or dead), every second, for ever."""
    while True:
        try:
            async with context.database.session() as session:
                rescued = await rescue_lapsed(session)
                for job in rescued:
                    if job.state == JobState.available:
                        signal_after_commit(session, job.tenant_id, [job.queue])
            if rescued:
                log.info("jobs.leases_rescued", jobs=len(rescued))
                metrics = context.resources.get(JOBS_METRICS_RESOURCE)
                if metrics is not None:
                    metrics.lapsed_leases.inc(len(rescued))
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("jobs.rescue_failed")
        await asyncio.sleep(RESCUE_INTERVAL_SECONDS)


async def fire_schedules(context: AppContext) -> None:
    """Enqueue the jobs of due cron ticks, twice a second, for ever."""
    while True:
        try:
            async with context.database.session() as session:
                fired = await fire_due_schedules(session)
                for job in fired:
                    signal_after_commit(session, job.tenant_id, [job.queue])
            if fired:
                log.info("jobs.schedules_fired", jobs=len(fired))
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("jobs.schedules_failed")
        await asyncio.sleep(SCHEDULE_INTERVAL_SECONDS)


async def prune_ended_jobs(context: AppContext) -> int:
    """Delete every ended job past its retention, one batch a transaction; returns how many."""
    settings = context.settings.jobs
    deleted = 0
    while True:
        async with context.database.session() as session:
            batch = await prune(
                session,
                completed_days=settings.completed_retention_days,
                discarded_days=settings.discarded_retention_days,
                batch=settings.retention_batch_size,
            )
        deleted += batch
        if batch < settings.retention_batch_size:
            return deleted


async def prune_ended_jobs_hourly(context: AppContext) -> None:
    """Retention (``KEEL_JOBS__COMPLETED_RETENTION_DAYS``...), every hour, for ever."""
    while True:
        try:
            deleted = await prune_ended_jobs(context)
            if deleted:
                log.info("jobs.retention.pruned", jobs=deleted)
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("jobs.retention_failed")
        await asyncio.sleep(RETENTION_INTERVAL_SECONDS)


async def refresh_queue_metrics(context: AppContext) -> None:
    """Read the jobs per queue and state into the gauges of ``/metrics``, for ever."""
    metrics = context.resources[JOBS_METRICS_RESOURCE]
    while True:
        try:
            async with context.database.session() as session:
                metrics.set_depths(await queue_stats(session, None))
        except Exception:  # a failed round must not end the loop; the next one retries
            log.warning("jobs.metrics_refresh_failed", exc_info=True)
        await asyncio.sleep(REFRESH_SECONDS)


service = ServiceSpec(
    name="jobs",
    router="keel.jobs.router:build_router",
    startup=start_jobs,
    companions=(listen_for_job_signals, refresh_queue_metrics),
    ready_check=jobs_ready,
    background=(rescue_lapsed_leases, fire_schedules, prune_ended_jobs_hourly, run_platform_tasks),
    model_modules=("keel.jobs.models",),
)

"""``keel jobs ...``: see queues and the dead letter queue, requeue, cancel, pause and resume,
limit queues and manage cron schedules from a shell.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator; its changes are audited as actor ``system``/``keel`` with the
operating-system account as display name, as the API's are. Bad input is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.commands import (
    fail_usage,
    format_datetime,
    operator_actor,
    print_json,
    run_in_tenant,
)
from keel.core.tenancy import DEFAULT_TENANT
from keel.jobs import service
from keel.jobs.audit_actions import record_change
from keel.jobs.models import JobState

app = typer.Typer(
    help="Jobs: queues, the dead letter queue, requeue, cancel, pause/resume, schedules.",
    no_args_is_help=True,
)
schedules_app = typer.Typer(help="Cron schedules.", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QueueArgument = Annotated[str, typer.Argument(help="Queue name, e.g. emails.", show_default=False)]
JobIdsArgument = Annotated[list[str], typer.Argument(help="Job ids.", show_default=False)]

#: The states shown as columns of ``keel jobs queues``, in their order.
COLUMNS = ("available", "scheduled", "running", "retryable", "discarded")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@app.command("queues")
def list_queues(as_json: JsonOption = False, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Each queue: paused, limits, jobs per state and the age of the oldest available job."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        overviews = await service.list_queues(session, tenant_id)
        if as_json:
            print_json(
                [
                    {
                        "name": overview.name,
                        "paused": overview.paused,
                        "concurrency_limit": overview.concurrency_limit,
                        "rate_limit_per_second": overview.rate_limit_per_second,
                        "states": {
                            state: {
                                "count": stats.count,
                                "oldest_age_seconds": stats.oldest_age_seconds,
                            }
                            for state, stats in overview.states.items()
                        },
                    }
                    for overview in overviews
                ]
            )
            return
        typer.echo("\t".join(("queue", "paused", "limit", "rate/s", *COLUMNS, "oldest")))
        for overview in overviews:
            counts = [
                str(overview.states[state].count) if state in overview.states else "0"
                for state in COLUMNS
            ]
            oldest = overview.states.get(JobState.available)
            typer.echo(
                "\t".join(
                    (
                        overview.name,
                        "yes" if overview.paused else "no",
                        str(overview.concurrency_limit or "-"),
                        f"{overview.rate_limit_per_second:g}"
                        if overview.rate_limit_per_second
                        else "-",
                        *counts,
                        _age(oldest.oldest_age_seconds if oldest else None),
                    )
                )
            )

    run_in_tenant(tenant, work)


@app.command("stats")
def stats(as_json: JsonOption = False, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Jobs per state over every queue."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        totals: dict[str, int] = {}
        for row in await service.queue_stats(session, tenant_id):
            totals[row.state] = totals.get(row.state, 0) + row.stats.count
        if as_json:
            print_json(totals)
            return
        for state in JobState:
            typer.echo(f"{state}\t{totals.get(state, 0)}")

    run_in_tenant(tenant, work)


@app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """One job as JSON, with its errors."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        from keel.jobs.schemas import Job

        job = await service.get_job(session, tenant_id, job_id)
        print_json(Job.model_validate(job).model_dump(mode="json"))

    run_in_tenant(tenant, work)


@app.command("dead")
def dead(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    as_json: JsonOption = False,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """The dead letter queue: discarded jobs with their last error, oldest first."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        jobs = await service.list_jobs(
            session, tenant_id, queue=queue, state=JobState.discarded, limit=limit
        )
        if as_json:
            print_json(
                [
                    {
                        "id": job.id,
                        "queue": job.queue,
                        "task": job.task,
                        "attempt": job.attempt,
                        "finished_at": job.finished_at,
                        "errors": job.errors,
                    }
                    for job in jobs
                ]
            )
            return
        for job in jobs:
            last = job.errors[-1]["error"] if job.errors else ""
            finished = format_datetime(job.finished_at) if job.finished_at else "-"
            typer.echo(f"{job.id}\t{job.queue}\t{job.task}\t{job.attempt}\t{finished}\t{last}")

    run_in_tenant(tenant, work)


@app.command("requeue")
def requeue(
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Job ids.", show_default=False)
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead job (of --queue, if given).")
    ] = False,
    queue: Annotated[str | None, typer.Option(help="With --all-dead: only this queue.")] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Make dead (or cancelled) jobs available now with a fresh set of attempts."""
    if bool(job_ids) == all_dead:
        fail_usage("name job ids, or pass --all-dead (with an optional --queue)")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        actor = operator_actor()
        if all_dead:
            count = await service.requeue_dead(session, tenant_id, None, queue=queue)
            record_change(
                session,
                actor,
                tenant_id,
                "jobs.dead.requeue",
                "queue",
                queue or "*",
                {"queue": queue, "ids": None, "requeued": count},
            )
            typer.echo(f"{count} dead jobs requeued")
            return
        for job_id in job_ids or []:
            job = await service.requeue(session, tenant_id, job_id)
            record_change(session, actor, tenant_id, "jobs.job.requeue", "job", job.id)
            typer.echo(f"job {job.id} requeued on {job.queue}")

    run_in_tenant(tenant, work)


@app.command("cancel")
def cancel(job_ids: JobIdsArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Cancel jobs that have not ended (a running one's worker hears of it at its heartbeat)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for job_id in job_ids:
            job = await service.cancel(session, tenant_id, job_id)
            record_change(session, operator_actor(), tenant_id, "jobs.job.cancel", "job", job.id)
            typer.echo(f"job {job.id} {job.state}")

    run_in_tenant(tenant, work)


@app.command("pause")
def pause(queue: QueueArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Stop handing out the queue's jobs (running ones go on; enqueues still land)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.pause_queue(session, tenant_id, queue)
        record_change(session, operator_actor(), tenant_id, "jobs.queue.pause", "queue", queue)
        typer.echo(f"queue {queue} paused")

    run_in_tenant(tenant, work)


@app.command("resume")
def resume(queue: QueueArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Hand out the queue's jobs again."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.resume_queue(session, tenant_id, queue)
        record_change(session, operator_actor(), tenant_id, "jobs.queue.resume", "queue", queue)
        typer.echo(f"queue {queue} resumed")

    run_in_tenant(tenant, work)


def _limit(text: str | None, kind: type[int] | type[float], option: str) -> Any:
    """``None`` (not given: keep), ``"none"`` (remove) or a number."""
    if text is None:
        return service.KEEP
    if text.lower() == "none":
        return None
    try:
        return kind(text)
    except ValueError:
        fail_usage(f"{option} is a number or 'none', not {text!r}")


@app.command("limit")
def limit(
    queue: QueueArgument,
    concurrency: Annotated[
        str | None, typer.Option(help="Jobs running at once across all workers, or 'none'.")
    ] = None,
    rate: Annotated[
        str | None, typer.Option(help="Jobs started per second across all workers, or 'none'.")
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Set or remove the queue's concurrency and rate limits."""
    if concurrency is None and rate is None:
        fail_usage("give --concurrency and/or --rate (a number, or 'none' to remove the limit)")
    concurrency_limit = _limit(concurrency, int, "--concurrency")
    rate_limit = _limit(rate, float, "--rate")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        before = await service.get_queue_config(session, tenant_id, queue)
        old = (
            before.concurrency_limit if before else None,
            before.rate_limit_per_second if before else None,
        )
        after = await service.configure_queue(
            session,
            tenant_id,
            queue,
            concurrency_limit=concurrency_limit,
            rate_limit_per_second=rate_limit,
        )
        new = (after.concurrency_limit, after.rate_limit_per_second)
        names = ("concurrency_limit", "rate_limit_per_second")
        diff = {
            name: {"before": was, "after": now}
            for name, was, now in zip(names, old, new, strict=True)
            if was != now
        }
        record_change(
            session, operator_actor(), tenant_id, "jobs.queue.configure", "queue", queue, diff
        )
        typer.echo(
            f"queue {queue}: concurrency {new[0] or 'unlimited'}, "
            f"rate {f'{new[1]:g}/s' if new[1] else 'unlimited'}"
        )

    run_in_tenant(tenant, work)


# -- schedules ------------------------------------------------------------------------------


@schedules_app.command("list")
def list_schedules(as_json: JsonOption = False, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Every schedule: cron, time zone, queue, task and next run."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        schedules = await service.list_schedules(session, tenant_id)
        if as_json:
            from keel.jobs.schemas import Schedule

            print_json([Schedule.model_validate(s).model_dump(mode="json") for s in schedules])
            return
        for schedule in schedules:
            state = "" if schedule.enabled else " (disabled)"
            next_run = format_datetime(schedule.next_run_at) if schedule.next_run_at else "-"
            typer.echo(
                f"{schedule.name}{state}\t{schedule.cron}\t{schedule.timezone}\t"
                f"{schedule.queue}\t{schedule.task}\tnext {next_run}"
            )

    run_in_tenant(tenant, work)


@schedules_app.command("set")
def set_schedule(
    name: Annotated[
        str, typer.Argument(help="Schedule name, e.g. nightly-report.", show_default=False)
    ],
    cron: Annotated[str, typer.Option(help="Cron expression: 5 fields, or 6 with seconds first.")],
    task: Annotated[str, typer.Option(help="The task each tick enqueues.")],
    queue: Annotated[str, typer.Option(help="The queue it goes on.")] = "default",
    timezone: Annotated[str, typer.Option(help="IANA time zone the cron is read in.")] = "UTC",
    args: Annotated[
        str, typer.Option(help="The task's arguments as a JSON array or object.")
    ] = "[]",
    disabled: Annotated[bool, typer.Option(help="Keep it, but do not fire it.")] = False,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create or replace a schedule: one job per tick, once across every replica."""
    try:
        arguments = json.loads(args)
    except ValueError as error:
        fail_usage(f"--args is not JSON: {error}")
    if not isinstance(arguments, list | dict):
        fail_usage("--args is a JSON array or object")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        saved = await service.put_schedule(
            session,
            tenant_id,
            name,
            cron=cron,
            queue=queue,
            task=task,
            timezone=timezone,
            args=arguments,
            enabled=not disabled,
        )
        record_change(
            session,
            operator_actor(),
            tenant_id,
            "jobs.schedule.put",
            "schedule",
            name,
            {"cron": cron, "timezone": timezone, "queue": queue, "task": task},
        )
        verb = "created" if saved.created else "replaced"
        next_run = saved.schedule.next_run_at
        typer.echo(f"schedule {name} {verb}; next run {format_datetime(next_run)}")

    run_in_tenant(tenant, work)


@schedules_app.command("delete")
def delete_schedule(
    name: Annotated[str, typer.Argument(help="Schedule name.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Delete a schedule (jobs it already enqueued stay)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.delete_schedule(session, tenant_id, name)
        record_change(
            session, operator_actor(), tenant_id, "jobs.schedule.delete", "schedule", name
        )
        typer.echo(f"schedule {name} deleted")

    run_in_tenant(tenant, work)

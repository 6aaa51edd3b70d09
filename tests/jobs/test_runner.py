"""Keel's own tasks on the engine (keel.jobs.runner), on SQLite and PostgreSQL: a task is
enqueued with the change that calls for it, runs once, and fails, retries, times out and
dies as a fleet job does; a stopped runner gives its jobs back; nobody reaches Keel's queues
over the API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from keel.core.context import AppContext, DiscardTask, PlatformTask, RetryTask, TaskRun
from keel.core.db import utcnow
from keel.core.lifecycle import build_context
from keel.jobs.models import JobState
from keel.jobs.runner import PlatformRunner
from keel.jobs.service import enqueue_task, get_job, rescue_lapsed
from keel.jobs.signals import JOB_SIGNALS_RESOURCE, JobSignals
from keel.migrations import upgrade
from keel.settings import Settings
from tests.support.tenants import TenantAdmin


@pytest.fixture
async def context(settings: Settings) -> AsyncIterator[AppContext]:
    context = build_context(settings)
    await upgrade(context.database)
    context.resources[JOB_SIGNALS_RESOURCE] = JobSignals()
    yield context
    await context.database.dispose()


def service_name() -> str:
    """A service of this test alone: its queue ``keel.<name>`` holds no other test's jobs."""
    return f"t{uuid.uuid4().hex[:10]}"


async def enqueue(context: AppContext, tenant_id: str, task: PlatformTask, args: Any) -> str:
    async with context.database.session() as session:
        return (await enqueue_task(session, tenant_id, task, args)).job.id


async def state_of(context: AppContext, tenant_id: str, job_id: str) -> Any:
    async with context.database.session() as session:
        return await get_job(session, tenant_id, job_id)


async def test_a_task_runs_once_with_its_args_and_completes_with_its_result(
    context: AppContext, tenant_id: str
) -> None:
    seen: list[tuple[TaskRun, Any]] = []

    async def double(context: AppContext, run: TaskRun, args: Any) -> Any:
        seen.append((run, args))
        return {"doubled": args["n"] * 2}

    task = PlatformTask(service_name(), "double", double, max_attempts=3)
    job_id = await enqueue(context, tenant_id, task, {"n": 21})
    runner = PlatformRunner(context, [task])
    assert await runner.drain() == 1
    assert await runner.drain() == 0  # nothing runs twice
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.completed
    assert job.result == {"doubled": 42}
    assert job.queue == task.queue == f"keel.{task.service}"
    [(run, args)] = seen
    assert (run.tenant_id, run.job_id, run.attempt, run.max_attempts) == (tenant_id, job_id, 1, 3)
    assert args == {"n": 21}


async def test_a_task_enqueued_in_a_rolled_back_change_never_exists(
    context: AppContext, tenant_id: str
) -> None:
    ran: list[Any] = []

    async def note(context: AppContext, run: TaskRun, args: Any) -> None:
        ran.append(args)

    task = PlatformTask(service_name(), "note", note)

    class Abandoned(Exception):
        pass

    async def abandoned_change() -> None:
        async with context.database.session() as session:
            await enqueue_task(session, tenant_id, task, "lost")
            raise Abandoned

    with pytest.raises(Abandoned):
        await abandoned_change()
    assert await PlatformRunner(context, [task]).drain() == 0
    assert ran == []


async def test_failures_retry_with_the_backoff_the_handler_names_then_die(
    context: AppContext, tenant_id: str
) -> None:
    async def flaky(context: AppContext, run: TaskRun, args: Any) -> None:
        if args == "retry":
            raise RetryTask("the provider throttled", seconds=120)
        if args == "discard":
            raise DiscardTask("the address is gone")
        if run.attempt == 1:
            raise RuntimeError("boom")
        # A crash's first backoff is about a second: a drain slower than that (a loaded
        # machine) runs the second attempt too, which keeps the job retryable here.
        raise RetryTask("still failing", seconds=120)

    task = PlatformTask(service_name(), "flaky", flaky, max_attempts=3)
    retry = await enqueue(context, tenant_id, task, "retry")
    discard = await enqueue(context, tenant_id, task, "discard")
    crash = await enqueue(context, tenant_id, task, "crash")
    runner = PlatformRunner(context, [task])
    before = utcnow()
    assert await runner.drain() in (3, 4)  # each job once; the crash maybe twice (above)

    job = await state_of(context, tenant_id, retry)
    assert job.state == JobState.retryable
    assert job.errors[-1]["error"] == "the provider throttled"
    assert before + timedelta(seconds=110) < job.run_at < utcnow() + timedelta(seconds=130)

    job = await state_of(context, tenant_id, discard)
    assert job.state == JobState.discarded
    assert job.attempt == 1  # discarded at once, attempts left or not

    job = await state_of(context, tenant_id, crash)
    assert job.state == JobState.retryable
    assert job.errors[0]["error"] == "RuntimeError: boom"
    assert "in flaky" in job.errors[0]["traceback"]


async def test_the_last_failed_attempt_goes_to_the_dead_letter_queue(
    context: AppContext, tenant_id: str
) -> None:
    async def crash(context: AppContext, run: TaskRun, args: Any) -> None:
        raise RetryTask("still failing", seconds=0)

    task = PlatformTask(service_name(), "crash", crash, max_attempts=2)
    job_id = await enqueue(context, tenant_id, task, None)
    runner = PlatformRunner(context, [task])
    assert await runner.drain() == 2  # the second attempt is due at once
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.discarded
    assert [error["attempt"] for error in job.errors] == [1, 2]


async def test_a_task_over_its_timeout_is_stopped_and_failed(
    context: AppContext, tenant_id: str
) -> None:
    async def hang(context: AppContext, run: TaskRun, args: Any) -> None:
        await asyncio.sleep(60)

    task = PlatformTask(service_name(), "hang", hang, max_attempts=1, timeout_seconds=1)
    job_id = await enqueue(context, tenant_id, task, None)
    assert await PlatformRunner(context, [task]).drain() == 1
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.discarded
    assert "ran over 1 s" in job.errors[-1]["error"]


async def test_a_job_of_a_task_this_keel_does_not_know_goes_dead_not_round(
    context: AppContext, tenant_id: str
) -> None:
    async def nothing(context: AppContext, run: TaskRun, args: Any) -> None:
        return None

    service = service_name()
    known = PlatformTask(service, "known", nothing)
    retired = PlatformTask(service, "retired", nothing)
    job_id = await enqueue(context, tenant_id, retired, None)
    assert await PlatformRunner(context, [known]).drain() == 1
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.discarded
    assert "No task" in job.errors[-1]["error"]


async def test_an_idle_runner_runs_a_new_task_and_a_stopped_one_gives_its_job_back(
    context: AppContext, tenant_id: str
) -> None:
    started = asyncio.Event()

    async def slow(context: AppContext, run: TaskRun, args: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    task = PlatformTask(service_name(), "slow", slow, max_attempts=5)
    runner = PlatformRunner(context, [task])
    running = asyncio.create_task(runner.run_forever())
    try:
        await asyncio.sleep(0.1)  # idle, waiting
        job_id = await enqueue(context, tenant_id, task, None)
        await asyncio.wait_for(started.wait(), timeout=10)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.retryable  # given back, due at once
    assert job.run_at <= utcnow()
    assert job.lease_token is None
    assert job.errors[-1]["error"] == "Keel stopped during the task."


@pytest.mark.parametrize("verb", ["enqueue", "fetch"])
async def test_nobody_enqueues_onto_or_works_keels_own_queues_over_the_api(
    client: httpx.AsyncClient, admin: TenantAdmin, verb: str
) -> None:
    if verb == "enqueue":
        answer = await client.post(
            "/jobs/v1/jobs", headers=admin.headers, json={"queue": "keel.notify", "task": "x"}
        )
    else:
        answer = await client.post(
            "/jobs/v1/fetch",
            headers=admin.headers,
            json={"queues": ["mine", "keel.notify"], "worker_id": "w", "wait_seconds": 0},
        )
    assert answer.status_code == 403, answer.text
    assert "Keel's own" in answer.json()["detail"]


async def test_a_long_task_keeps_its_short_lease_alive_and_runs_once(
    context: AppContext, tenant_id: str
) -> None:
    runs: list[int] = []

    async def long(context: AppContext, run: TaskRun, args: Any) -> None:
        runs.append(run.attempt)
        await asyncio.sleep(2.5)

    task = PlatformTask(service_name(), "long", long, timeout_seconds=30)
    job_id = await enqueue(context, tenant_id, task, None)

    async def rescue_forever() -> None:  # what keel worker's rescue loop does, faster
        while True:
            async with context.database.session() as session:
                await rescue_lapsed(session)
            await asyncio.sleep(0.2)

    rescuer = asyncio.create_task(rescue_forever())
    try:
        assert await PlatformRunner(context, [task], lease_seconds=1.0).drain() == 1
    finally:
        rescuer.cancel()
    job = await state_of(context, tenant_id, job_id)
    assert job.state == JobState.completed
    assert runs == [1]  # never taken over while it ran 2.5 leases long

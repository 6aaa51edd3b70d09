"""``Worker`` in-process against a real Keel: results acknowledged, failures reported with
their error and traceback, timeouts, the task's own attempt limit, a cancel stopping a running
job, progress, and a graceful stop releasing what outlives the grace period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from keel_client.jobs import Job, JobsClient, JobState, Retry, Worker, current_job
from tests.client.jobs.conftest import LEASE_SECONDS


def worker_for(jobs: JobsClient, queue: str, **options: Any) -> Worker:
    options = {"concurrency": 4, "lease_seconds": LEASE_SECONDS, "poll_wait": 0.5,
               "shutdown_grace": 1.0, **options}  # fmt: skip
    return Worker(jobs, queues=[queue], **options)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10.0)


async def settled(
    jobs: JobsClient, job_id: str | None, done: Callable[[Job], bool] | None = None
) -> Job:
    """The job once ``done`` (default: in a final or retryable state), polled up to 15 s: a
    loaded CI machine has taken 5 s between two attempts the task asked to run at once, and
    15 s is still less than Keel's own backoff before a third attempt (1 s, then 16 s)."""
    assert job_id is not None
    done = done or (lambda job: job.state not in (JobState.AVAILABLE, JobState.RUNNING))
    deadline = time.monotonic() + 15.0
    while not done(job := await jobs.get(job_id)):
        assert time.monotonic() < deadline, f"not settled: {job}"
        await asyncio.sleep(0.05)
    return job


async def test_results_are_acknowledged_for_async_and_plain_tasks(
    jobs: JobsClient, queue: str
) -> None:
    worker = worker_for(jobs, queue)

    @worker.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @worker.task()
    def greet(name: str) -> str:  # a plain function runs in a thread
        return f"hello {name}"

    first = await jobs.enqueue("add", 2, 3, queue=queue)
    second = await jobs.enqueue("greet", kwargs={"name": "ada"}, queue=queue)
    async with running(worker):
        assert (await settled(jobs, first.id)).result == 5
        assert (await settled(jobs, second.id)).result == "hello ada"
    assert worker.stats.completed == 2


async def test_an_exception_fails_the_job_with_its_type_message_and_traceback(
    jobs: JobsClient, queue: str
) -> None:
    worker = worker_for(jobs, queue)

    @worker.task("explode", max_attempts=1)
    async def explode(report_id: int) -> None:
        raise ValueError(f"report {report_id} has no rows")

    ref = await jobs.enqueue("explode", 42, queue=queue, max_attempts=5)
    async with running(worker):
        job = await settled(jobs, ref.id)
    # The task's max_attempts=1 makes the first failure final though the job allows 5.
    assert job.state is JobState.DISCARDED
    [error] = job.errors
    assert error.error == "ValueError: report 42 has no rows"
    assert error.traceback is not None
    assert 'raise ValueError(f"report {report_id} has no rows")' in error.traceback


async def test_a_task_over_its_timeout_is_stopped_and_failed(jobs: JobsClient, queue: str) -> None:
    worker = worker_for(jobs, queue)

    @worker.task("slow", timeout=0.2, max_attempts=1)
    async def slow() -> None:
        await asyncio.sleep(30)

    ref = await jobs.enqueue("slow", queue=queue)
    async with running(worker):
        job = await settled(jobs, ref.id)
    assert job.state is JobState.DISCARDED
    assert job.errors[-1].error.startswith("TimeoutError: task slow ran longer than 0.2 s")


async def test_progress_is_sent_with_the_heartbeat(jobs: JobsClient, queue: str) -> None:
    worker = worker_for(jobs, queue)
    release = asyncio.Event()

    @worker.task("import_rows")
    async def import_rows() -> None:
        current_job().report_progress({"rows": 10})
        await release.wait()

    ref = await jobs.enqueue("import_rows", queue=queue)
    async with running(worker):
        job = await settled(jobs, ref.id, lambda job: job.progress == {"rows": 10})
        release.set()
        job = await settled(jobs, ref.id)
    assert job.state is JobState.COMPLETED


async def test_a_cancelled_running_job_is_stopped_at_its_next_heartbeat(
    jobs: JobsClient, queue: str
) -> None:
    worker = worker_for(jobs, queue)
    started, stopped = asyncio.Event(), asyncio.Event()

    @worker.task("long")
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    ref = await jobs.enqueue("long", queue=queue)
    assert ref.id is not None
    async with running(worker):
        await asyncio.wait_for(started.wait(), 30.0)
        await jobs.cancel(ref.id)
        await asyncio.wait_for(stopped.wait(), LEASE_SECONDS + 2.0)
    assert (await jobs.get(ref.id)).state is JobState.CANCELLED
    assert worker.stats.stopped == 1


async def test_stop_releases_what_outlives_the_grace_period(jobs: JobsClient, queue: str) -> None:
    worker = worker_for(jobs, queue, shutdown_grace=0.2)
    started = asyncio.Event()

    @worker.task("long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(30)

    ref = await jobs.enqueue("long", queue=queue)
    async with running(worker):
        await asyncio.wait_for(started.wait(), 30.0)
    job = await jobs.get(ref.id or "")
    assert job.state in (JobState.AVAILABLE, JobState.RETRYABLE)
    assert job.errors[-1].error == "released: the worker shut down"
    assert worker.stats.released == 1


async def test_a_task_names_its_own_wait_between_attempts(jobs: JobsClient, queue: str) -> None:
    """``retry_in`` per task, and ``raise Retry(in_seconds)`` per attempt (as arq's
    ``Retry(defer=...)``), decide when the next attempt runs instead of Keel's backoff."""
    worker = worker_for(jobs, queue)
    attempts: list[tuple[str, float]] = []

    @worker.task("flaky", retry_in=lambda attempt: 0.0)
    async def flaky() -> str:
        attempts.append(("flaky", time.monotonic()))
        if current_job().attempt < 3:
            raise ConnectionError("upstream down")
        return "done"

    @worker.task("polite")
    async def polite() -> str:
        attempts.append(("polite", time.monotonic()))
        if current_job().attempt == 1:
            raise Retry(in_seconds=1, reason="rate limited upstream")
        return "done"

    first = await jobs.enqueue("flaky", queue=queue)
    second = await jobs.enqueue("polite", queue=queue)
    async with running(worker):
        # Keel's own backoff would wait 1 s, then 16 s: both finish within settled()'s 15 s
        # only because the task chose the waits.
        flaky_job = await settled(jobs, first.id, lambda job: job.state is JobState.COMPLETED)
        polite_job = await settled(jobs, second.id, lambda job: job.state is JobState.COMPLETED)
    assert (flaky_job.attempt, polite_job.attempt) == (3, 2)
    assert polite_job.errors[0].error.endswith("rate limited upstream")
    assert polite_job.errors[0].traceback is None
    polite_times = [at for name, at in attempts if name == "polite"]
    assert polite_times[1] - polite_times[0] >= 0.9

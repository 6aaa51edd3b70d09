"""``Worker``: runs a service's tasks for the jobs Keel leases to it.

One worker fetches for up to ``concurrency`` jobs at once and runs each in a task of its own::

    fetch loop ── free slots? ── POST /jobs/v1/fetch (long poll, up to 30 s) ──▶ leases
        │           (carrying the acks queued meanwhile)
        └─ per lease: run task(*args) ── within its timeout ──▶ ack(result), queued
                │                        raised ────────────▶ fail(error, traceback)
                │                        timed out ─────────▶ fail("TimeoutError: ...")
                └─ heartbeat every lease/3 ─ cancel requested ─▶ stop the task (no report)
                                            └ lease lost (409) ─▶ stop the task (no report)

A queued ack goes with the next fetch, or else in ``POST /jobs/v1/ack`` with the others
queued within about 5 ms (``_batching.AckBuffer``): a busy worker pays one request for a
job's ack and its next lease together. A worker just handed jobs waits up to those 5 ms for
one to end before it fetches again, so that an idle worker's quick job costs one request
for its ack and the next lease too, not a fetch and an ``/ack``. A failure is reported at
once, alone.

Shutdown (SIGTERM, SIGINT, or :meth:`Worker.stop`): stop fetching, give the running jobs
``shutdown_grace`` seconds to finish, then stop the rest and fail them with
``retry_in_seconds=0`` so another worker takes them at once, and send the queued acks. A
second signal stops at once.

A worker killed outright (``kill -9``) stops heartbeating: its jobs' leases lapse and Keel
makes them available again within about a lease period, so a job runs at least once;
a stale worker's ack is refused (409), so it completes exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import inspect
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from keel_client.http import CircuitOpenError, ClientError, KeelHTTPError
from keel_client.jobs._batching import ACK_DELAY_SECONDS, MAX_ACKS, AckBuffer
from keel_client.jobs._client import DEFAULT_QUEUE, MAX_WAIT_SECONDS, JobsClient
from keel_client.jobs._models import Ack, FetchAnswer, Lease
from keel_client.jobs._policy import error_text, traceback_text

__all__ = ["JobContext", "Retry", "Task", "Worker", "WorkerStats", "current_job"]

logger = logging.getLogger("keel_client.jobs")

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("keel_current_job")
#: The longest a worker that was just handed jobs waits for one of them to end before its next
#: fetch, so that the fetch carries its ack (:meth:`Worker._let_quick_jobs_end`).
QUICK_JOB_SECONDS = ACK_DELAY_SECONDS
#: Turns of the event loop given to the jobs just started before that moment is counted.
QUICK_JOB_TURNS = 16


def current_job() -> JobContext:
    """The job the calling task runs for (its id, attempt, progress); ``RuntimeError``
    outside a job.

    Example::

        @worker.task("import_rows")
        async def import_rows(path: str) -> None:
            for done, chunk in enumerate(chunks(path)):
                ...
                current_job().report_progress({"done": done})
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_job() is for code running inside a job") from None


class _Stop(enum.Enum):
    """Why a running job was stopped before it returned."""

    CANCELLED = "cancel requested"
    LEASE_LOST = "lease lost"
    SHUTDOWN = "worker shutting down"


@dataclass
class JobContext:
    """A running job as its task sees it (:func:`current_job`)."""

    lease: Lease
    worker_id: str
    _progress: Any = None
    _has_progress: bool = False
    _stop: _Stop | None = None
    _body: asyncio.Task[Any] | None = None

    @property
    def id(self) -> str:
        return self.lease.id

    @property
    def attempt(self) -> int:
        return self.lease.attempt

    def report_progress(self, progress: Any) -> None:
        """Keep a small JSON value as the job's progress; sent with the next heartbeat."""
        self._progress, self._has_progress = progress, True

    def _take_progress(self) -> Any:
        progress, self._progress, self._has_progress = self._progress, None, False
        return progress


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task: the function, and the worker's limits for its jobs.

    ``max_attempts``: the attempt after which a failure is final (the job goes dead) even if
    the job allows more; ``timeout``: seconds an attempt may run (default: the job's own).
    """

    name: str
    function: Callable[..., Any]
    max_attempts: int | None = None
    timeout: float | None = None
    #: The wait before the next attempt after a failed one, from the attempt's number
    #: (default: Keel's backoff, ``attempt⁴`` s plus jitter, or the job's own curve).
    retry_in: Callable[[int], float] | None = None

    def retry_after(self, attempt: int) -> float | None:
        return None if self.retry_in is None else max(0.0, float(self.retry_in(attempt)))


class Retry(Exception):
    """Raised by a task: this attempt failed and the next should run ``in_seconds`` from now
    (the attempt still counts towards ``max_attempts``)."""

    def __init__(self, in_seconds: float = 0.0, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.in_seconds = max(0.0, in_seconds)


@dataclass
class WorkerStats:
    """What a worker did since it started."""

    fetched: int = 0
    completed: int = 0
    failed: int = 0
    #: Stopped because the job was cancelled or its lease was lost.
    stopped: int = 0
    #: Failed with ``retry_in_seconds=0`` at shutdown, for another worker.
    released: int = 0
    running: int = 0
    by_task: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs the tasks of a service for jobs of ``queues`` (in that order of preference).

    Example::

        worker = Worker(queues=["reports"], concurrency=10)

        @worker.task("send_report", max_attempts=5, timeout=60)
        async def send_report(report_id: int) -> dict[str, int]:
            ...
            return {"pages": 3}            # kept as the job's result (small JSON)

        # python -m keel_client.jobs run myservice.jobs:worker   (KEEL_URL, KEEL_TOKEN)
        # or: await worker.run()

    ``client``: a ``Keel`` (its ``.jobs``), a :class:`JobsClient`, or ``None`` for
    ``JobsClient.from_env()`` at :meth:`run`. The token needs ``jobs:<queue>:work``.
    ``lease_seconds``: how long a job stays this worker's without a heartbeat (heartbeats
    go every third of it); a killed worker's jobs run again about that long after.
    ``ack_delay``: how long a finished job's ack waits to go with others' (or the next
    fetch) before it is sent; the worker's shutdown sends what waits.
    A task function is async, or plain (run in a thread; a timeout then stops waiting for
    it, not the thread). It gets the job's ``args`` as ``*args`` (a list) or ``**kwargs``
    (an object); its return value is the job's result.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_wait: float = MAX_WAIT_SECONDS,
        shutdown_grace: float = 30.0,
        worker_id: str | None = None,
        fetch_backoff_max: float = 10.0,
        ack_delay: float = ACK_DELAY_SECONDS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        if lease_seconds < 1:
            raise ValueError("lease_seconds is at least 1")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self._client_given = client
        self.queues = list(queues)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_wait = min(poll_wait, MAX_WAIT_SECONDS)
        self.shutdown_grace = shutdown_grace
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fetch_backoff_max = fetch_backoff_max
        self.ack_delay = ack_delay
        self.tasks: dict[str, Task] = {}
        self.stats = WorkerStats()
        self._running: dict[asyncio.Task[None], JobContext] = {}
        self._stopping: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._grace: float | None = None
        self._is_running = False
        self._acks: AckBuffer | None = None

    def task(
        self,
        name: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_in: Callable[[int], float] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Register the decorated function as task ``name`` (default: its ``__name__``).
        ``retry_in(attempt)``: this task's own wait after a failed attempt, in seconds."""

        def register(function: Callable[P, R]) -> Callable[P, R]:
            task_name = name or function.__name__
            if task_name in self.tasks:
                raise ValueError(f"task {task_name!r} is registered already")
            self.tasks[task_name] = Task(task_name, function, max_attempts, timeout, retry_in)
            return function

        return register

    @property
    def is_running(self) -> bool:
        return self._is_running

    def stop(self, grace: float | None = None) -> None:
        """Stop fetching; running jobs get ``grace`` seconds (default ``shutdown_grace``) to
        finish before they are released. Call on the worker's loop (a signal handler is)."""
        if self._stopping is None:
            return
        if self._stopping.is_set():
            grace = 0.0  # asked twice: stop now
        self._grace = self.shutdown_grace if grace is None else grace
        self._stopping.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Fetch and run jobs until :meth:`stop` (or SIGTERM/SIGINT with
        ``install_signal_handlers``, the main thread's loop only), then shut down gracefully."""
        if self._is_running:
            raise RuntimeError("this worker is running already")
        if not self.tasks:
            raise RuntimeError("register a task first (@worker.task)")
        client, owned = self._jobs_client()
        self._stopping, self._slot_freed = asyncio.Event(), asyncio.Event()
        acks = self._acks = AckBuffer(
            ack_many=client.ack_many,
            ack_one=lambda ack: client.ack(ack.lease, ack.result),
            delay=self.ack_delay,
        )
        self._is_running = True
        loop = asyncio.get_running_loop()
        signals: list[signal.Signals] = []
        if install_signal_handlers:
            for number in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(number, self.stop)
                    signals.append(number)
        logger.info("worker %s fetching from %s (concurrency %d)", self.worker_id,
                    ",".join(self.queues), self.concurrency)  # fmt: skip
        try:
            await self._fetch_until_stopped(client, acks)
            await self._shut_down(client)
        finally:
            await acks.aclose()
            self._acks = None
            for number in signals:
                loop.remove_signal_handler(number)
            self._is_running = False
            self._stopping = None
            if owned:
                await client.aclose()
        logger.info("worker %s stopped", self.worker_id)

    def _jobs_client(self) -> tuple[JobsClient, bool]:
        given = self._client_given
        if given is None:
            return JobsClient.from_env(), True
        if isinstance(given, JobsClient):
            return given, False
        jobs = getattr(given, "jobs", None)
        if isinstance(jobs, JobsClient):
            return jobs, False
        raise TypeError("Worker takes a Keel, a JobsClient or None (JobsClient.from_env())")

    async def _fetch_until_stopped(self, client: JobsClient, acks_queued: AckBuffer) -> None:
        stopping, slot_freed = self._stopping, self._slot_freed
        assert stopping is not None
        assert slot_freed is not None
        failures = 0
        while not stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                slot_freed.clear()
                await _first(slot_freed.wait(), stopping.wait())
                continue
            acks = acks_queued.take(MAX_ACKS)
            fetch = asyncio.ensure_future(
                client.ack_and_fetch(
                    acks,
                    self.queues,
                    worker_id=self.worker_id,
                    limit=min(free, 100),
                    wait_seconds=self.poll_wait,
                    lease_seconds=self.lease_seconds,
                )
            )
            await _first(fetch, stopping.wait())
            if not fetch.done():
                # Jobs Keel leased in this very instant come back when their lease lapses.
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetch
                acks_queued.give_back(acks, may_have_reached=True)
                break
            try:
                answer: FetchAnswer = fetch.result()
            except KeelHTTPError as error:
                sent = not isinstance(error, CircuitOpenError)
                acks_queued.give_back(acks, may_have_reached=sent)
                failures += 1
                delay = min(self.fetch_backoff_max, 0.5 * 2 ** min(failures - 1, 10))
                if failures == 1:
                    logger.warning("fetching jobs failed, retrying: %s", error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
                continue
            failures = 0
            acks_queued.settle(acks, answer)
            for lease in answer.jobs:
                self._start(client, lease)
            if answer.jobs and not acks_queued.pending:
                await self._let_quick_jobs_end(slot_freed, stopping)

    async def _let_quick_jobs_end(self, slot_freed: asyncio.Event, stopping: asyncio.Event) -> None:
        """Wait a moment (``ack_delay``, at most :data:`QUICK_JOB_SECONDS`) for one of the
        jobs just started to end, so that its ack goes with the next fetch: an idle worker
        handed a quick job then pays Keel one request for the ack and the next lease, not a
        fetch and an ``/ack`` of its own (the ack would wait that long for company anyway)."""
        slot_freed.clear()  # the jobs just started have not run yet: none has ended
        # First a few turns of the loop, whatever the clock says: a job that ends without
        # waiting on anything ends within them, even on a loaded machine whose scheduler
        # took this process off its core for longer than the whole moment.
        for _ in range(QUICK_JOB_TURNS):
            await asyncio.sleep(0)
            if slot_freed.is_set() or stopping.is_set():
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self.ack_delay, QUICK_JOB_SECONDS)):
                await _first(slot_freed.wait(), stopping.wait())

    def _start(self, client: JobsClient, lease: Lease) -> None:
        self.stats.fetched += 1
        context = JobContext(lease, self.worker_id)
        task = self.tasks.get(lease.task)
        if task is not None:  # the body now: it runs on the loop's next turn, its runner's after
            context._body = asyncio.create_task(
                self._call(task, context), context=_context_for(context)
            )
        runner = asyncio.create_task(
            self._run_job(client, context, task), name=f"keel-job-{lease.id}"
        )
        self._running[runner] = context
        self.stats.running = len(self._running)
        runner.add_done_callback(self._finished)

    def _finished(self, runner: asyncio.Task[None]) -> None:
        self._running.pop(runner, None)
        self.stats.running = len(self._running)
        if not runner.cancelled() and runner.exception() is not None:
            logger.error("a job runner failed", exc_info=runner.exception())
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _shut_down(self, client: JobsClient) -> None:
        if not self._running:
            return
        grace = self.shutdown_grace if self._grace is None else self._grace
        logger.info("waiting up to %.1f s for %d running jobs", grace, len(self._running))
        await asyncio.wait(set(self._running), timeout=grace)
        for context in self._running.values():
            context._stop = _Stop.SHUTDOWN
            if context._body is not None:
                context._body.cancel()
        if self._running:
            # Each runner reports its release (one short call) and ends.
            await asyncio.wait(set(self._running), timeout=15.0)

    async def _run_job(self, client: JobsClient, context: JobContext, task: Task | None) -> None:
        lease, body = context.lease, context._body
        if task is None or body is None:
            await self._report(
                client.fail(lease, f"no task {lease.task!r} on worker {self.worker_id}"), lease
            )
            self.stats.failed += 1
            return
        timeout = task.timeout if task.timeout is not None else lease.timeout_seconds
        heartbeat = asyncio.create_task(self._heartbeat(client, context, body))
        try:
            done, _ = await asyncio.wait({body}, timeout=timeout)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if not done:
            body.cancel()
            with contextlib.suppress(BaseException):
                await body
            self.stats.failed += 1
            message = f"TimeoutError: task {task.name} ran longer than {timeout} s"
            last = _is_last(task, lease)
            retry = None if last else task.retry_after(lease.attempt)
            await self._report(
                client.fail(lease, message, discard=last, retry_in_seconds=retry), lease
            )
            return
        if body.cancelled():
            await self._stopped(client, context)
            return
        error = body.exception()
        if error is not None:
            self.stats.failed += 1
            logger.warning("job %s (%s, attempt %d) failed: %s", lease.id, task.name,
                           lease.attempt, error_text(error, 200))  # fmt: skip
            last = _is_last(task, lease)
            if last:
                retry = None
            elif isinstance(error, Retry):
                retry = error.in_seconds
            else:
                retry = task.retry_after(lease.attempt)
            await self._report(
                client.fail(
                    lease,
                    error_text(error),
                    traceback=None if isinstance(error, Retry) else traceback_text(error),
                    discard=last,
                    retry_in_seconds=retry,
                ),
                lease,
            )
            return
        result = body.result()
        try:
            json.dumps(result)
        except (TypeError, ValueError) as not_json:
            self.stats.failed += 1
            message = f"the result of {task.name} is not JSON: {error_text(not_json)}"
            await self._report(client.fail(lease, message, discard=_is_last(task, lease)), lease)
            return
        self.stats.completed += 1
        self.stats.by_task[task.name] = self.stats.by_task.get(task.name, 0) + 1
        assert self._acks is not None  # set while the worker runs
        self._acks.add(Ack(lease, result))  # sent with the next fetch, or within ~5 ms

    async def _stopped(self, client: JobsClient, context: JobContext) -> None:
        lease = context.lease
        if context._stop is _Stop.SHUTDOWN:
            self.stats.released += 1
            await self._report(
                client.fail(lease, "released: the worker shut down", retry_in_seconds=0), lease
            )
        elif context._stop is None:
            self.stats.failed += 1
            await self._report(client.fail(lease, "CancelledError: the task was cancelled"), lease)
        else:
            self.stats.stopped += 1
            logger.info("job %s stopped: %s", lease.id, context._stop.value)

    async def _call(self, task: Task, context: JobContext) -> Any:
        args = context.lease.args
        positional: list[Any] = [] if args is None or isinstance(args, Mapping) else list(args)
        keywords: dict[str, Any] = dict(args) if isinstance(args, Mapping) else {}
        if inspect.iscoroutinefunction(task.function):
            return await task.function(*positional, **keywords)
        result = await asyncio.to_thread(task.function, *positional, **keywords)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _heartbeat(
        self, client: JobsClient, context: JobContext, body: asyncio.Task[Any]
    ) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            progress = context._take_progress() if context._has_progress else None
            try:
                answer = await client.heartbeat(
                    context.lease, lease_seconds=self.lease_seconds, progress=progress,
                    deadline=interval,
                )  # fmt: skip
            except ClientError as error:
                if error.status in (404, 409):
                    context._stop = _Stop.LEASE_LOST
                    body.cancel()
                    return
                logger.warning("heartbeat of job %s refused: %s", context.id, error)
                continue
            except KeelHTTPError as error:
                logger.warning("heartbeat of job %s failed: %s", context.id, error)
                continue
            if answer.cancel_requested:
                context._stop = _Stop.CANCELLED
                body.cancel()
                return

    async def _report(self, call: Awaitable[Any], lease: Lease) -> None:
        """Send an ack or fail; a refusal (the lease was lost) or an outage is logged: the
        job's lease then lapses and Keel hands it out again."""
        try:
            await call
        except ClientError as error:
            if error.status == 409:
                logger.warning("job %s: the lease was taken over; the report is refused", lease.id)
            else:
                logger.error("job %s: Keel refused the report: %s", lease.id, error)
        except KeelHTTPError as error:
            logger.error("job %s: the report did not reach Keel: %s", lease.id, error)


def _is_last(task: Task, lease: Lease) -> bool:
    return task.max_attempts is not None and lease.attempt >= task.max_attempts


def _context_for(job: JobContext) -> contextvars.Context:
    context = contextvars.copy_context()
    context.run(_current.set, job)
    return context


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` is done; cancel the others' own tasks (not
    those of futures passed in)."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    owned = [task for task, given in zip(tasks, awaitables, strict=True) if task is not given]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in owned:
            task.cancel()

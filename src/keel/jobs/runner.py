"""Keel's own tasks on the jobs engine: the runner ``keel worker`` (and ``keel serve`` on the
embedded default) starts for every enabled service's ``tasks`` (:mod:`keel.core.context`).

It is a worker like the fleet's, minus HTTP: it claims from the services' ``keel.<service>``
queues of every tenant with the engine's own functions, runs each job's handler under the
task's timeout, and completes or fails the job, so Keel's work gets what the fleet's gets —
leases (a killed process's jobs run again once their lease lapses), retries with backoff,
the dead letter queue, ``keel jobs dead --queue keel.notify``, metrics.

Leases are short (``KEEL_JOBS__PLATFORM_LEASE_SECONDS``, 30 s) and a live runner extends
those of its running jobs every third of that: a runner that dies (``kill -9``, a lost
machine) has its jobs taken by another within a lease, while a handler may run as long as
its task's timeout. On shutdown the runner stops claiming and fails what is still running
with no wait before the next attempt, so another process takes it at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import traceback
from collections.abc import Sequence

from sqlalchemy import select

from keel.core.context import AppContext, DiscardTask, PlatformTask, RetryTask, TaskRun
from keel.core.logging import get_logger
from keel.core.tenancy import Tenant
from keel.jobs.service import Claim, claim, complete, fail, heartbeat
from keel.jobs.signals import ANY_TENANT, JOB_SIGNALS_RESOURCE

log = get_logger(__name__)

#: The longest an idle runner goes without looking for due jobs (scheduled ones, and
#: signals another process sent where none reach this one).
IDLE_WAIT_SECONDS = 1.0
#: How long the list of tenants is trusted.
TENANTS_TTL_SECONDS = 10.0
#: Jobs one runner runs at once.
DEFAULT_CONCURRENCY = 10
#: The longest error text kept with a failed attempt.
MAX_ERROR_CHARS = 2_000


def platform_tasks(context: AppContext) -> list[PlatformTask]:
    """The tasks of every service enabled in this process."""
    return [task for spec in context.services for task in spec.tasks]


class PlatformRunner:
    """Claims and runs the jobs of ``tasks`` for every tenant, ``concurrency`` at a time."""

    def __init__(
        self,
        context: AppContext,
        tasks: Sequence[PlatformTask],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("a runner needs tasks to run")
        self.context = context
        self.tasks = {task.task_name: task for task in tasks}
        self.queues = sorted({task.queue for task in tasks})
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds or context.settings.jobs.platform_lease_seconds
        self.worker_id = f"keel-runner:{socket.gethostname()}:{os.getpid()}"
        self._tenants: list[str] = []
        self._tenants_read_at = float("-inf")
        #: The handlers running, with the job each runs.
        self._running: dict[asyncio.Task[None], tuple[str, Claim]] = {}

    async def run_forever(self) -> None:
        """Claim, run, repeat; wait for a signal (or a second) when there is nothing to do."""
        heartbeats = asyncio.create_task(self._heartbeats(), name="keel-runner-heartbeats")
        try:
            while True:
                signals = self.context.resources.get(JOB_SIGNALS_RESOURCE)
                mark = signals.mark() if signals is not None else 0
                try:
                    claimed = await self._claim_and_start()
                except Exception:  # a failed round must not end the loop; the next retries
                    log.exception("jobs.runner.claim_failed")
                    claimed = 0
                if len(self._running) >= self.concurrency:
                    await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
                elif claimed == 0:
                    if signals is not None:
                        await signals.wait(ANY_TENANT, self.queues, mark, IDLE_WAIT_SECONDS)
                    else:
                        await asyncio.sleep(IDLE_WAIT_SECONDS)
        finally:
            heartbeats.cancel()
            await self._release_running()

    async def drain(self) -> int:
        """Run every job due now (and any they make due now) to its outcome; how many ran.
        For tests and ``keel`` commands that want the work done before they go on."""
        ran = 0
        heartbeats = asyncio.create_task(self._heartbeats(), name="keel-runner-heartbeats")
        try:
            while True:
                claimed = await self._claim_and_start()
                ran += claimed
                if not self._running:
                    return ran
                await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
        finally:
            heartbeats.cancel()

    async def _heartbeats(self) -> None:
        """Extend the leases of the running jobs every third of a lease, for ever."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            for tenant_id, job in list(self._running.values()):
                try:
                    async with self.context.database.session() as session:
                        await heartbeat(
                            session,
                            tenant_id,
                            job.job_id,
                            job.lease_token,
                            lease_seconds=self.lease_seconds,
                        )
                except Exception:  # ended meanwhile, or taken over: its own outcome tells
                    log.info("jobs.runner.heartbeat_refused", job_id=job.job_id)

    async def _tenant_ids(self) -> list[str]:
        now = time.monotonic()
        if now - self._tenants_read_at > TENANTS_TTL_SECONDS:
            async with self.context.database.session() as session:
                self._tenants = list(await session.scalars(select(Tenant.id).order_by(Tenant.id)))
            self._tenants_read_at = now
        return self._tenants

    async def _claim_and_start(self) -> int:
        started = 0
        for tenant_id in await self._tenant_ids():
            free = self.concurrency - len(self._running)
            if free <= 0:
                break
            async with self.context.database.session() as session:
                claims = await claim(
                    session,
                    tenant_id,
                    self.queues,
                    worker_id=self.worker_id,
                    limit=free,
                    lease_seconds=self.lease_seconds,
                )
            for job in claims:
                running = asyncio.create_task(
                    self._run(tenant_id, job), name=f"keel-task:{job.task}:{job.job_id}"
                )
                self._running[running] = (tenant_id, job)
                running.add_done_callback(self._forget)
            started += len(claims)
        return started

    def _forget(self, running: asyncio.Task[None]) -> None:
        self._running.pop(running, None)

    async def _run(self, tenant_id: str, job: Claim) -> None:
        task = self.tasks.get(job.task)
        if task is None:
            await self._fail(tenant_id, job, f"No task {job.task!r} in this Keel.", discard=True)
            return
        run = TaskRun(tenant_id, job.job_id, job.attempt, job.max_attempts)
        try:
            async with asyncio.timeout(task.timeout_seconds):
                result = await task.resolve_handler()(self.context, run, job.args)
        except RetryTask as exc:
            await self._fail(tenant_id, job, str(exc), retry_in_seconds=exc.seconds)
        except DiscardTask as exc:
            await self._fail(tenant_id, job, str(exc), discard=True)
        except TimeoutError:
            await self._fail(tenant_id, job, f"The task ran over {task.timeout_seconds} s.")
        except asyncio.CancelledError:
            raise  # shutting down: _release_running fails the job
        except Exception as exc:
            log.warning("jobs.runner.task_failed", task=job.task, job_id=job.job_id, exc_info=True)
            text = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            # Frames only, never their local variables (they may hold secrets).
            trace = "".join(traceback.format_exception(exc, limit=20))[-MAX_ERROR_CHARS * 4 :]
            await self._fail(tenant_id, job, text, trace=trace)
        else:
            async with self.context.database.session() as session:
                await complete(session, tenant_id, job.job_id, job.lease_token, result)

    async def _fail(
        self,
        tenant_id: str,
        job: Claim,
        error: str,
        *,
        trace: str | None = None,
        retry_in_seconds: float | None = None,
        discard: bool = False,
    ) -> None:
        try:
            async with self.context.database.session() as session:
                await fail(
                    session,
                    tenant_id,
                    job.job_id,
                    job.lease_token,
                    error,
                    trace,
                    retry_in_seconds=retry_in_seconds,
                    discard=discard,
                )
        except Exception:  # the lease lapses and the rescue makes the job available again
            log.warning("jobs.runner.fail_not_recorded", job_id=job.job_id, exc_info=True)

    async def _release_running(self) -> None:
        """Stop the running handlers and give their jobs back for another attempt at once."""
        running = dict(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for tenant_id, job in running.values():
            await self._fail(tenant_id, job, "Keel stopped during the task.", retry_in_seconds=0)


async def run_platform_tasks(context: AppContext) -> None:
    """The background loop running every enabled service's own tasks (none: it ends)."""
    tasks = platform_tasks(context)
    if not tasks:
        return
    await PlatformRunner(context, tasks).run_forever()

"""A service's worker module as the process tests run it:
``python -m keel_client.jobs run tests.client.jobs.worker_app:worker``.

Settings from the environment: ``JOBS_QUEUE``, ``JOBS_LEASE_SECONDS``, ``JOBS_GRACE_SECONDS``,
and ``JOBS_RECORD`` (a file each task appends ``start <job id> <pid>`` and ``done <job id>
<pid>`` lines to, so the test sees what ran where, even after a ``kill -9``).
"""

from __future__ import annotations

import asyncio
import os

from keel_client.jobs import Worker, current_job

worker = Worker(
    queues=[os.environ.get("JOBS_QUEUE", "default")],
    concurrency=4,
    lease_seconds=float(os.environ.get("JOBS_LEASE_SECONDS", "2")),
    shutdown_grace=float(os.environ.get("JOBS_GRACE_SECONDS", "5")),
)


def record(event: str) -> None:
    line = f"{event} {current_job().id} {os.getpid()}\n"
    fd = os.open(os.environ["JOBS_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@worker.task("sleep")
async def sleep(seconds: float) -> dict[str, int]:
    record("start")
    await asyncio.sleep(seconds)
    record("done")
    return {"pid": os.getpid()}

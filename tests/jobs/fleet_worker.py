"""The worker module of the fleet tests (``tests/jobs/test_fleet.py``), run as a service runs
its own: ``python -m keel_client.jobs run tests.jobs.fleet_worker:worker``.

From the environment: ``FLEET_QUEUES`` (comma-separated), ``FLEET_CONCURRENCY`` and
``FLEET_RECORD``: a file each task appends one line to, ``<task> <job id> <start> <end>
<pid>`` (wall-clock seconds), written with ``O_APPEND`` so several processes share it.
"""

from __future__ import annotations

import asyncio
import os
import time

from keel_client.jobs import Worker, current_job

worker = Worker(
    queues=os.environ.get("FLEET_QUEUES", "default").split(","),
    concurrency=int(os.environ.get("FLEET_CONCURRENCY", "10")),
    lease_seconds=10.0,
    poll_wait=5.0,
    shutdown_grace=2.0,
)


def record(task: str, started: float) -> None:
    line = f"{task} {current_job().id} {started:.6f} {time.time():.6f} {os.getpid()}\n"
    fd = os.open(os.environ["FLEET_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@worker.task("hold")
async def hold(seconds: float) -> None:
    """Run for ``seconds``: the concurrency test sees how many overlap."""
    started = time.time()
    await asyncio.sleep(seconds)
    record("hold", started)


@worker.task("tick")
async def tick() -> None:
    """What a cron schedule or a rate-limited queue runs: it only records its start."""
    record("tick", time.time())

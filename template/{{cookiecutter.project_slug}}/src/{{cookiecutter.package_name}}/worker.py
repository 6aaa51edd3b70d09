"""The service's background work on Keel's queue, and the task of its nightly schedule.

Run it with ``make worker`` (``python -m {{ cookiecutter.package_name }}.worker``): it works
the queue until SIGTERM. The nightly schedule is declared in ``keel.toml`` (``keel apply``
puts it in Keel), so it fires once per tick however many workers run, and the worker needs
only to work its queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

from keel_client.jobs import Worker, current_job
from keel_client.logs import configure_logging

from {{ cookiecutter.package_name }}.settings import ENV_PREFIX, SERVICE

QUEUE = f"{SERVICE}-default"
BUILD_REPORT = "{{ cookiecutter.package_name }}.build_report"
NIGHTLY_REPORT = f"{SERVICE}-nightly-report"
#: Every day at 02:00 UTC: the report of the day before (keel.toml's schedule says so).
NIGHTLY_CRON = "0 2 * * *"

log = logging.getLogger("{{ cookiecutter.package_name }}.worker")

worker = Worker(queues=[QUEUE], concurrency=4)


@worker.task(BUILD_REPORT, max_attempts=5, timeout=300)
async def build_report(day: str | None = None) -> dict[str, str]:
    """Build the report of ``day`` (default: yesterday, for the nightly schedule)."""
    day = day or (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    current_job().report_progress({"step": "collecting"})
    log.info("report built", extra={"day": day})
    return {"day": day, "status": "built"}


async def main() -> None:
    configure_logging(os.environ.get(f"{ENV_PREFIX}LOG_LEVEL", "INFO"))
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())

"""The jobs service as Keel mounts and runs it.

Only the engine exists so far (issue 18): no HTTP routes, SDK or CLI yet. What runs is the
rescue of lapsed leases, so that a job whose worker died is claimable again within a second
or two of its lease running out.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.logging import get_logger
from keel.core.services import ServiceSpec
from keel.jobs.models import Job
from keel.jobs.service import rescue_lapsed

log = get_logger(__name__)

#: How often lapsed leases are looked for: a killed worker's job runs again within a lease
#: period and this.
RESCUE_INTERVAL_SECONDS = 1.0


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
            if rescued:
                log.info("jobs.leases_rescued", jobs=rescued)
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("jobs.rescue_failed")
        await asyncio.sleep(RESCUE_INTERVAL_SECONDS)


service = ServiceSpec(
    name="jobs",
    ready_check=jobs_ready,
    background=(rescue_lapsed_leases,),
    model_modules=("keel.jobs.models",),
)

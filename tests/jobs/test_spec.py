"""The jobs service as Keel runs it: lapsed leases are rescued by its background work, with
no call from anyone (a worker killed mid-job leaves nothing to call)."""

from __future__ import annotations

import asyncio
import uuid

from keel.app import create_app
from keel.core.db import Database
from keel.core.tenancy import create_tenant
from keel.jobs.models import JobState
from keel.jobs.service import claim, enqueue, get_job
from keel.migrations import upgrade
from keel.settings import Settings
from tests.support.apps import lifespan_of


async def test_the_running_service_makes_a_lapsed_job_available_again(settings: Settings) -> None:
    database = Database.from_settings(settings)
    await upgrade(database)
    try:
        async with database.session() as session:
            tenant = await create_tenant(session, f"jobs-{uuid.uuid4().hex[:12]}")
        async with database.session() as session:
            job = (await enqueue(session, tenant.id, "rescue", "t", max_attempts=3)).job
        async with database.session() as session:
            await claim(session, tenant.id, ["rescue"], worker_id="killed", lease_seconds=0.5)

        app = create_app(settings.model_copy(update={"services": ["jobs"]}), run_background=True)
        async with lifespan_of(app):
            names = {task.get_name() for task in app.state.keel.background_tasks}
            assert "jobs-rescue_lapsed_leases" in names
            state = JobState.running
            for _ in range(100):  # the lease lapses after 0.5 s, the sweep runs every second
                async with database.session() as session:
                    state = (await get_job(session, tenant.id, job.id)).state
                if state == JobState.available:
                    break
                await asyncio.sleep(0.05)
        assert state == JobState.available
    finally:
        await database.dispose()

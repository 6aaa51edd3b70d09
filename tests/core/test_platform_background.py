"""The platform's own background work runs whichever services are enabled: change events of
every stream are pruned by ``keel serve --services config,flags`` too (it used to be a task
of the secrets service only)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import select, update

from keel.app import create_app
from keel.core.changes import ChangeEvent, record_change
from keel.core.db import Database, utcnow
from keel.core.lifecycle import background_work, build_context
from keel.core.tenancy import bind_tenant, ensure_tenant
from keel.migrations import upgrade
from keel.settings import Settings
from tests.support.apps import lifespan_of

PRUNE = "platform-prune_change_events_periodically"


def test_background_work_names_the_platform_pruner_for_any_subset(settings: Settings) -> None:
    for services in (["config", "flags"], ["auth"], []):
        names = [
            name
            for name, _ in background_work(
                build_context(settings.model_copy(update={"services": services}))
            )
        ]
        assert names.count(PRUNE) == 1, (services, names)
    secrets_only = build_context(settings.model_copy(update={"services": ["secrets"]}))
    # The secrets service no longer carries its own copy of the pruner.
    assert [name for name, _ in background_work(secrets_only)].count(PRUNE) == 1


async def _old_and_new_events(database: Database) -> tuple[list[int], int]:
    async with database.session() as session:
        tenant, _ = await ensure_tenant(session, f"t-{uuid.uuid4().hex[:10]}")
    seqs = []
    for n in range(3):
        async with database.session() as session:
            bind_tenant(session, tenant.id)
            record_change(session, tenant.id, "config", f"app/env{n}", {"revision": n})
        async with database.session() as session:
            bind_tenant(session, tenant.id)
            seqs.append(
                await session.scalar(
                    select(ChangeEvent.seq).where(ChangeEvent.subject == f"app/env{n}")
                )
            )
    async with database.session() as session:
        await session.execute(
            update(ChangeEvent)
            .where(ChangeEvent.seq.in_(seqs[:2]))
            .values(created_at=utcnow() - timedelta(days=30))
            .execution_options(all_tenants=True)
        )
    return seqs[:2], seqs[2]


async def _remaining(database: Database, seqs: list[int]) -> set[int]:
    async with database.session() as session:
        found = await session.scalars(
            select(ChangeEvent.seq)
            .where(ChangeEvent.seq.in_(seqs))
            .execution_options(all_tenants=True)
        )
        return set(found)


async def test_serve_with_config_and_flags_only_prunes_change_events(settings: Settings) -> None:
    database = Database.from_settings(settings)
    await upgrade(database)
    try:
        old, newest = await _old_and_new_events(database)
        assert await _remaining(database, [*old, newest]) == {*old, newest}

        only = settings.model_copy(update={"services": ["config", "flags"]})
        # What `keel serve --services config,flags` runs (on PostgreSQL `keel worker` runs
        # the same background work: run_background says which process does).
        app = create_app(only, run_background=True)
        async with lifespan_of(app):
            names = {task.get_name() for task in app.state.keel.background_tasks}
            assert PRUNE in names
            assert not any(name.startswith("secrets-") for name in names)
            for _ in range(200):  # the pruner's first round runs as it starts
                if not await _remaining(database, old):
                    break
                await asyncio.sleep(0.025)
        assert await _remaining(database, [*old, newest]) == {newest}
    finally:
        await database.dispose()

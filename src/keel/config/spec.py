"""The config service as Keel mounts and runs it."""

from __future__ import annotations

from sqlalchemy import select

from keel.config import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.config.models import ConfigApplication
from keel.core.context import AppContext
from keel.core.services import ServiceSpec


async def config_ready(context: AppContext) -> None:
    """The service's tables answer."""
    async with context.database.session() as session:
        await session.execute(
            select(ConfigApplication.id).limit(1).execution_options(all_tenants=True)
        )


service = ServiceSpec(
    name="config",
    router="keel.config.router:build_router",
    ready_check=config_ready,
    # Change events are pruned by the platform's own background work (keel.core.lifecycle).
    model_modules=("keel.config.models",),
)

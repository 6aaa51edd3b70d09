"""The flags service as Keel mounts and runs it."""

from __future__ import annotations

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.services import ServiceSpec
from keel.flags import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.flags.models import Flag


async def flags_ready(context: AppContext) -> None:
    """The service's tables answer."""
    async with context.database.session() as session:
        await session.execute(select(Flag.id).limit(1).execution_options(all_tenants=True))


service = ServiceSpec(
    name="flags",
    router="keel.flags.router:build_router",
    ready_check=flags_ready,
    # Change events are pruned by the platform's own background work (keel.core.lifecycle).
    model_modules=("keel.flags.models",),
)

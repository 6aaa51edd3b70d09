"""The secrets service as Keel mounts and runs it."""

from __future__ import annotations

from sqlalchemy import select

from keel.app import AppContext
from keel.core.services import ServiceSpec
from keel.secrets import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
    router,
)
from keel.secrets.kv import KvEngine
from keel.secrets.models import SecretMount
from keel.secrets.router import SECRETS_RESOURCE


async def start_secrets(context: AppContext) -> None:
    context.resources[SECRETS_RESOURCE] = KvEngine(context.keyring)


async def secrets_ready(context: AppContext) -> None:
    """The service's tables answer."""
    async with context.database.session() as session:
        await session.execute(select(SecretMount.id).limit(1).execution_options(all_tenants=True))


service = ServiceSpec(
    name="secrets",
    router=router.build_router,
    ready_check=secrets_ready,
    startup=start_secrets,
    model_modules=("keel.secrets.models",),
)

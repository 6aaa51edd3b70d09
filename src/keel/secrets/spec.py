"""The secrets service as Keel mounts and runs it."""

from __future__ import annotations

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.services import ServiceSpec
from keel.secrets import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.secrets.engines.database import DATABASE_RESOURCE, DatabaseEngine, sweep_forever
from keel.secrets.engines.kv import SECRETS_RESOURCE, KvEngine
from keel.secrets.engines.rotation import rotate_secrets_on_schedule
from keel.secrets.models import SecretMount


async def start_secrets(context: AppContext) -> None:
    context.resources[SECRETS_RESOURCE] = KvEngine(context.keyring)
    context.resources[DATABASE_RESOURCE] = DatabaseEngine(context.keyring)


async def secrets_ready(context: AppContext) -> None:
    """The service's tables answer."""
    async with context.database.session() as session:
        await session.execute(select(SecretMount.id).limit(1).execution_options(all_tenants=True))


async def revoke_expired_leases(context: AppContext) -> None:
    """The lease sweeper: expired dynamic credentials are revoked within seconds."""
    engine = context.resources[DATABASE_RESOURCE]
    assert isinstance(engine, DatabaseEngine)
    await sweep_forever(engine, context.database.session)


service = ServiceSpec(
    name="secrets",
    router="keel.secrets.router:build_router",
    ready_check=secrets_ready,
    startup=start_secrets,
    background=(revoke_expired_leases, rotate_secrets_on_schedule),
    model_modules=("keel.secrets.models",),
)

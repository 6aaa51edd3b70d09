"""Flags environments (``production``, ``staging``, …): each holds every flag's state, its
segments and its own version, the ETag of its snapshot."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound
from keel.core.tenancy import bind_tenant
from keel.flags.models import (
    ExperimentEvent,
    Flag,
    FlagEnvironment,
    FlagEvaluation,
    FlagState,
    Segment,
)
from keel.flags.service.changes import flush_unique, record_flags_change
from keel.flags.service.documents import check_environment_key, default_state, field_diff


async def create_environment(
    session: AsyncSession, tenant_id: str, key: str, *, description: str = "", actor: Actor
) -> FlagEnvironment:
    """A new environment holding every flag, each in its default state (off)."""
    bind_tenant(session, tenant_id)
    check_environment_key(key)
    message = f"The flags environment {key!r} exists already."
    if await session.scalar(select(FlagEnvironment.id).where(FlagEnvironment.key == key)):
        raise Conflict(message)
    environment = FlagEnvironment(tenant_id=tenant_id, key=key, description=description)
    session.add(environment)
    await flush_unique(session, message)
    for flag in await session.scalars(select(Flag)):
        session.add(
            FlagState(
                tenant_id=tenant_id,
                flag_id=flag.id,
                environment_id=environment.id,
                **default_state(flag.variations),
            )
        )
    await session.flush()
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.env.create",
        actor=actor,
        target_type="flags_environment",
        target_id=key,
        data={"description": description},
    )
    record_flags_change(session, tenant_id, key, environment.version)
    return environment


async def list_environments(session: AsyncSession, tenant_id: str) -> list[FlagEnvironment]:
    bind_tenant(session, tenant_id)
    return list(await session.scalars(select(FlagEnvironment).order_by(FlagEnvironment.key)))


async def get_environment(session: AsyncSession, tenant_id: str, key: str) -> FlagEnvironment:
    bind_tenant(session, tenant_id)
    environment = await session.scalar(select(FlagEnvironment).where(FlagEnvironment.key == key))
    if environment is None:
        raise NotFound(f"No flags environment {key!r}.")
    return environment


async def update_environment(
    session: AsyncSession, tenant_id: str, key: str, *, description: str, actor: Actor
) -> FlagEnvironment:
    environment = await get_environment(session, tenant_id, key)
    diff = field_diff({"description": environment.description}, {"description": description})
    if diff:
        environment.description = description
        environment.updated_at = utcnow()
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="flags.env.update",
            actor=actor,
            target_type="flags_environment",
            target_id=key,
            data={"diff": diff},
        )
    return environment


async def delete_environment(
    session: AsyncSession, tenant_id: str, key: str, *, actor: Actor
) -> None:
    """Delete the environment with its states, segments, events and evaluation times."""
    environment = await get_environment(session, tenant_id, key)
    for model in (FlagState, Segment, ExperimentEvent, FlagEvaluation):
        await session.execute(
            delete(model)
            .where(model.environment_id == environment.id)
            .execution_options(synchronize_session=False)
        )
    version = environment.version + 1
    await session.delete(environment)
    await session.flush()
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.env.delete",
        actor=actor,
        target_type="flags_environment",
        target_id=key,
    )
    record_flags_change(session, tenant_id, key, version, deleted=True)


async def environment_version(
    session: AsyncSession, tenant_id: str, environment_key: str
) -> tuple[str, int]:
    """The environment's id and version: one small query, the ETag of a snapshot."""
    bind_tenant(session, tenant_id)
    row = (
        await session.execute(
            select(FlagEnvironment.id, FlagEnvironment.version).where(
                FlagEnvironment.key == environment_key
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"No flags environment {environment_key!r}.")
    return str(row[0]), int(row[1])

"""Environments of an application and their revisions: create, list, read a snapshot,
the history, the difference between two revisions."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config.models import ConfigApplication, ConfigEnvironment, ConfigRevision
from keel.config.service.applications import get_application
from keel.config.service.state import CONFIG_STREAM, Snapshot, change_subject, flush_unique
from keel.config.service.validation import Diff, check_name, diff_values
from keel.core.audit import Actor, record_event
from keel.core.changes import record_change
from keel.core.errors import Conflict, NotFound
from keel.core.http import PageRequest, paginate
from keel.core.tenancy import bind_tenant


async def create_environment(
    session: AsyncSession, tenant_id: str, application_name: str, name: str, *, actor: Actor
) -> ConfigEnvironment:
    """A new environment at revision 1, holding no values."""
    application = await get_application(session, tenant_id, application_name)
    check_name("environment", name)
    exists = await session.scalar(
        select(ConfigEnvironment.id).where(
            ConfigEnvironment.application_id == application.id, ConfigEnvironment.name == name
        )
    )
    message = f"The environment {name!r} of {application_name!r} exists already."
    if exists:
        raise Conflict(message)
    environment = ConfigEnvironment(
        tenant_id=tenant_id, application_id=application.id, name=name, revision=1
    )
    session.add(environment)
    await flush_unique(session, message)
    session.add(
        ConfigRevision(
            tenant_id=tenant_id,
            environment_id=environment.id,
            number=1,
            values={},
            changes={"set": [], "unset": []},
            operation="create",
            message="environment created",
            author_type=actor.type,
            author_id=actor.id,
        )
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.env.create",
        actor=actor,
        target_type="config_environment",
        target_id=change_subject(application_name, name),
        data={"revision": 1},
    )
    record_change(
        session,
        tenant_id,
        CONFIG_STREAM,
        change_subject(application_name, name),
        {"revision": 1, "keys": []},
    )
    return environment


async def list_environments(
    session: AsyncSession, tenant_id: str, application_name: str
) -> list[ConfigEnvironment]:
    application = await get_application(session, tenant_id, application_name)
    return list(
        await session.scalars(
            select(ConfigEnvironment)
            .where(ConfigEnvironment.application_id == application.id)
            .order_by(ConfigEnvironment.name)
        )
    )


async def environment_revision(
    session: AsyncSession, tenant_id: str, application: str, environment: str
) -> tuple[str, int]:
    """The environment's id and current revision number: one small query, the ETag of
    every read."""
    bind_tenant(session, tenant_id)
    row = (
        await session.execute(
            select(ConfigEnvironment.id, ConfigEnvironment.revision)
            .join(ConfigApplication, ConfigApplication.id == ConfigEnvironment.application_id)
            .where(ConfigApplication.name == application, ConfigEnvironment.name == environment)
        )
    ).first()
    if row is None:
        raise NotFound(f"No environment {environment!r} of config application {application!r}.")
    return str(row[0]), int(row[1])


async def read_snapshot(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    revision: int | None = None,
) -> Snapshot:
    """The values of ``revision`` (default: the current one)."""
    environment_id, current = await environment_revision(
        session, tenant_id, application, environment
    )
    number = current if revision is None else revision
    values = await session.scalar(
        select(ConfigRevision.values).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    if values is None:
        raise NotFound(f"No revision {number} of {change_subject(application, environment)}.")
    return Snapshot(application, environment, number, dict(values))


# -- revisions ------------------------------------------------------------------------------


async def get_revision(
    session: AsyncSession, tenant_id: str, application: str, environment: str, number: int
) -> ConfigRevision:
    environment_id, _ = await environment_revision(session, tenant_id, application, environment)
    row = await session.scalar(
        select(ConfigRevision).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    if row is None:
        raise NotFound(f"No revision {number} of {change_subject(application, environment)}.")
    return row


async def history(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    page: PageRequest,
) -> tuple[list[ConfigRevision], str | None]:
    """The environment's revisions, oldest first, one page at a time."""
    environment_id, _ = await environment_revision(session, tenant_id, application, environment)
    return await paginate(
        session,
        select(ConfigRevision).where(ConfigRevision.environment_id == environment_id),
        page,
        order_by=[ConfigRevision.number],
        cursor_of=lambda row: [row.number],
    )


async def diff_revisions(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    from_revision: int,
    to_revision: int,
) -> Diff:
    """What changed from one revision to another (either order)."""
    before = await read_snapshot(session, tenant_id, application, environment, from_revision)
    after = await read_snapshot(session, tenant_id, application, environment, to_revision)
    return diff_values(before.values, after.values)

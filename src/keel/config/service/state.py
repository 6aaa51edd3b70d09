"""Where an environment stands: its revision, values and schema, read in one query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config.models import ConfigApplication, ConfigEnvironment, ConfigRevision
from keel.core.errors import Conflict, NotFound, PreconditionFailed
from keel.core.tenancy import bind_tenant

#: The change stream of config revisions.
CONFIG_STREAM = "config"


def change_subject(application: str, environment: str) -> str:
    return f"{application}/{environment}"


@dataclass(frozen=True)
class EnvironmentState:
    """Where an environment stands: what a read or a write starts from."""

    application: str
    environment: str
    environment_id: str
    revision: int
    json_schema: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    application: str
    environment: str
    revision: int
    values: dict[str, Any]


async def current_state(
    session: AsyncSession, tenant_id: str, application: str, environment: str
) -> EnvironmentState:
    """The environment's current revision, values and schema in one query."""
    bind_tenant(session, tenant_id)
    row = (
        await session.execute(
            select(
                ConfigEnvironment.id,
                ConfigEnvironment.revision,
                ConfigApplication.json_schema,
                ConfigRevision.values,
            )
            .join(ConfigApplication, ConfigApplication.id == ConfigEnvironment.application_id)
            .join(
                ConfigRevision,
                and_(
                    ConfigRevision.environment_id == ConfigEnvironment.id,
                    ConfigRevision.number == ConfigEnvironment.revision,
                ),
            )
            .where(ConfigApplication.name == application, ConfigEnvironment.name == environment)
        )
    ).first()
    if row is None:
        raise NotFound(f"No environment {environment!r} of config application {application!r}.")
    return EnvironmentState(
        application, environment, str(row[0]), int(row[1]), row[2], dict(row[3] or {})
    )


async def values_of_revision(
    session: AsyncSession, environment_id: str, number: int
) -> dict[str, Any]:
    """The values of a revision the caller found with :func:`environment_revision`."""
    values = await session.scalar(
        select(ConfigRevision.values).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    return dict(values or {})


async def environment_states(
    session: AsyncSession, application: ConfigApplication
) -> list[EnvironmentState]:
    rows = await session.execute(
        select(ConfigEnvironment.id, ConfigEnvironment.name, ConfigEnvironment.revision)
        .where(ConfigEnvironment.application_id == application.id)
        .order_by(ConfigEnvironment.name)
    )
    states = []
    for environment_id, name, revision in rows.all():
        values = await values_of_revision(session, environment_id, revision)
        states.append(
            EnvironmentState(application.name, name, environment_id, revision, None, values)
        )
    return states


async def flush_unique(
    session: AsyncSession, message: str, error: type[Conflict | PreconditionFailed] = Conflict
) -> None:
    """Flush; a unique constraint lost to a concurrent writer is ``error``, not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise error(message) from None

"""Config applications: a name, a description and an optional JSON Schema their
environments' values must satisfy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config.models import ConfigApplication
from keel.config.service.state import environment_states, flush_unique
from keel.config.service.validation import check_json_schema, check_name, schema_violations
from keel.core.audit import Actor, record_event
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.tenancy import bind_tenant
from keel.core.versioned import update_versioned_row


async def create_application(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    description: str = "",
    json_schema: dict[str, Any] | None = None,
    actor: Actor,
) -> ConfigApplication:
    bind_tenant(session, tenant_id)
    check_name("application", name)
    if json_schema is not None:
        check_json_schema(json_schema)
    if await session.scalar(select(ConfigApplication.id).where(ConfigApplication.name == name)):
        raise Conflict(f"The config application {name!r} exists already.")
    application = ConfigApplication(
        tenant_id=tenant_id, name=name, description=description, json_schema=json_schema
    )
    session.add(application)
    await flush_unique(session, f"The config application {name!r} exists already.")
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.app.create",
        actor=actor,
        target_type="config_application",
        target_id=name,
        data={"has_schema": json_schema is not None},
    )
    return application


async def list_applications(session: AsyncSession, tenant_id: str) -> list[ConfigApplication]:
    bind_tenant(session, tenant_id)
    return list(await session.scalars(select(ConfigApplication).order_by(ConfigApplication.name)))


async def get_application(session: AsyncSession, tenant_id: str, name: str) -> ConfigApplication:
    bind_tenant(session, tenant_id)
    application = await session.scalar(
        select(ConfigApplication).where(ConfigApplication.name == name)
    )
    if application is None:
        raise NotFound(f"No config application {name!r}.")
    return application


async def update_application(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    json_schema: dict[str, Any] | None,
    description: str | None = None,
    if_match: str | None,
    actor: Actor,
) -> ConfigApplication:
    """Replace the application's JSON Schema (``None`` removes it). A schema that a current
    environment's values fail is refused, listing the environments and their errors."""
    application = await get_application(session, tenant_id, name)
    check_if_match(if_match, application.version, required=False)
    if json_schema is not None:
        check_json_schema(json_schema)
        failing = []
        for state in await environment_states(session, application):
            violations = schema_violations(json_schema, state.values)
            if violations:
                failing.append(
                    {
                        "environment": state.environment,
                        "revision": state.revision,
                        "errors": [violation.as_dict() for violation in violations[:20]],
                    }
                )
        if failing:
            raise ValidationFailed(
                "Current values of some environments do not satisfy this JSON Schema.",
                environments=failing,
            )
    version = await update_versioned_row(
        session,
        application,
        {
            "json_schema": json_schema,
            "description": application.description if description is None else description,
        },
        changed_message="The application changed since it was read.",
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.app.update",
        actor=actor,
        target_type="config_application",
        target_id=name,
        data={"version": version, "has_schema": json_schema is not None},
    )
    await session.refresh(application)
    return application

"""The service's config application: its JSON Schema and the values of each environment the
manifest names (a key named is set when missing or different; other keys stay)."""

from __future__ import annotations

from typing import Any

from keel.config import service
from keel.core.errors import NotFound
from keel.manifest.plan import Change, Target


async def plan(target: Target) -> list[Change]:
    config = target.loaded.manifest.config
    app = target.loaded.config_app
    if config is None or app is None:
        return []
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    schema = target.loaded.json_schema
    changes: list[Change] = []
    environments: dict[str, dict[str, Any]] = {}
    try:
        application = await service.get_application(session, tenant_id, app)
    except NotFound:

        async def create_app() -> None:
            await service.create_application(
                session,
                tenant_id,
                app,
                description=config.description,
                json_schema=schema,
                actor=actor,
            )

        details = ["with a JSON Schema"] if schema is not None else []
        changes.append(Change("+", "config-app", app, create_app, details))
    else:
        if config.json_schema is not None and application.json_schema != schema:

            async def update_schema() -> None:
                await service.update_application(
                    session, tenant_id, app, json_schema=schema, if_match=None, actor=actor
                )

            changes.append(Change("~", "config-app", app, update_schema, ["schema"]))
        for environment in await service.list_environments(session, tenant_id, app):
            snapshot = await service.read_snapshot(session, tenant_id, app, environment.name)
            environments[environment.name] = snapshot.values

    for name, values in config.values.items():
        current = environments.get(name)
        changed = {
            key: value
            for key, value in values.items()
            if current is None or key not in current or current[key] != value
        }
        if current is not None and not changed:
            continue

        async def write(
            name: str = name, changed: dict[str, Any] = changed, new: bool = current is None
        ) -> None:
            if new:
                await service.create_environment(session, tenant_id, app, name, actor=actor)
            if changed:
                await service.write_values(
                    session,
                    tenant_id,
                    app,
                    name,
                    set_values=changed,
                    message="keel apply",
                    actor=actor,
                )

        # Key names only: a value may be sensitive.
        symbol = "+" if current is None else "~"
        changes.append(Change(symbol, "config", f"{app}/{name}", write, sorted(changed)))
    return changes

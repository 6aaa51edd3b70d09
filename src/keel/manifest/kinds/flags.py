"""Flags environments and flag definitions. A flag's state (on, rules) is never touched: it
belongs to the people running the service."""

from __future__ import annotations

from typing import Any

from keel.core.errors import NotFound
from keel.flags import service
from keel.flags.service.documents import default_variations, definition_document
from keel.manifest.load import flag_definition
from keel.manifest.plan import Change, Target, shown

#: The definition's fields a manifest sets (``key`` and ``type`` never change).
CHANGEABLE = ("description", "tags", "owner", "variations", "salt", "experiment")


async def plan(target: Target) -> list[Change]:
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    manifest = target.loaded.manifest
    changes: list[Change] = []
    existing = {
        environment.key for environment in await service.list_environments(session, tenant_id)
    }
    for key in manifest.flag_environments:
        if key in existing:
            continue

        async def create_environment(key: str = key) -> None:
            await service.create_environment(session, tenant_id, key, actor=actor)

        existing.add(key)
        changes.append(Change("+", "flag-environment", key, create_environment))

    for key, flag in manifest.flags.items():
        wanted = flag_definition(key, flag.model_dump())
        wanted["variations"] = flag.variations or default_variations(flag.type)
        try:
            current = definition_document(await service.get_flag(session, tenant_id, key))
        except NotFound:

            async def create(key: str = key, wanted: dict[str, Any] = wanted) -> None:
                await service.create_flag(
                    session,
                    tenant_id,
                    key,
                    flag_type=wanted["type"],
                    variations=wanted["variations"],
                    description=wanted["description"],
                    tags=wanted["tags"],
                    owner=wanted["owner"],
                    salt=wanted["salt"],
                    experiment=wanted["experiment"],
                    actor=actor,
                )

            changes.append(Change("+", "flag", key, create, [wanted["type"]]))
            continue
        if current["type"] != wanted["type"]:
            target.refuse(
                ("flags", key, "type"),
                f"the flag is a {current['type']} flag; a flag's type cannot change"
                " (define a new flag)",
            )
            continue
        patch = {name: wanted[name] for name in CHANGEABLE if current.get(name) != wanted[name]}
        details = [f"{name} {shown(current.get(name))} -> {shown(patch[name])}" for name in patch]
        if current.get("archived"):
            patch["archived"] = False
            details.append("restored (was archived)")
        if not patch:
            continue

        async def update(key: str = key, patch: dict[str, Any] = patch) -> None:
            await service.update_flag(session, tenant_id, key, patch, actor=actor)

        changes.append(Change("~", "flag", key, update, details))
    return changes

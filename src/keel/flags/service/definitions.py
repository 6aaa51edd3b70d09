"""Flag definitions: key, type, variations, salt, tags, owner and the experiment mark, shared
by every environment; defining a flag gives it its default state (off) in each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.tenancy import bind_tenant
from keel.core.versioned import update_versioned_row
from keel.flags.models import Flag, FlagEnvironment, FlagState
from keel.flags.service.changes import bump_environment_version, flush_unique, record_flags_change
from keel.flags.service.documents import (
    DEFINITION_FIELDS,
    check_key,
    default_state,
    default_variations,
    definition_document,
    field_diff,
    merge_patch,
    merged_flag,
    prerequisite_keys,
    state_document,
    validate_flag_document,
)


async def _states_of(session: AsyncSession, flag: Flag) -> list[tuple[FlagEnvironment, FlagState]]:
    rows = await session.execute(
        select(FlagEnvironment, FlagState)
        .join(FlagState, FlagState.environment_id == FlagEnvironment.id)
        .where(FlagState.flag_id == flag.id)
        .order_by(FlagEnvironment.key)
    )
    return [(row[0], row[1]) for row in rows.all()]


async def create_flag(
    session: AsyncSession,
    tenant_id: str,
    key: str,
    *,
    flag_type: str = "boolean",
    variations: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    tags: Sequence[str] = (),
    owner: str = "",
    salt: str | None = None,
    experiment: bool = False,
    actor: Actor,
) -> Flag:
    """Define a flag; it starts off in every environment (:func:`default_state`)."""
    bind_tenant(session, tenant_id)
    check_key("flag", key)
    variations = [dict(entry) for entry in variations or default_variations(flag_type)]
    definition = {
        "key": key,
        "description": description,
        "tags": list(tags),
        "owner": owner,
        "type": flag_type,
        "variations": variations,
        "salt": salt or key,
        "experiment": experiment,
        "archived": False,
    }
    state = default_state(variations)
    validate_flag_document(merged_flag(definition, 2, state))
    message = f"The flag {key!r} exists already."
    if await session.scalar(select(Flag.id).where(Flag.key == key)):
        raise Conflict(message)
    flag = Flag(
        tenant_id=tenant_id,
        **{name: value for name, value in definition.items() if name != "archived"},
    )
    session.add(flag)
    await flush_unique(session, message)
    for environment in await session.scalars(select(FlagEnvironment)):
        session.add(
            FlagState(tenant_id=tenant_id, flag_id=flag.id, environment_id=environment.id, **state)
        )
        await session.flush()
        record_flags_change(
            session,
            tenant_id,
            environment.key,
            await bump_environment_version(session, environment),
            keys=[key],
        )
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.flag.create",
        actor=actor,
        target_type="flag",
        target_id=key,
        data={"diff": field_diff({}, definition)},
    )
    return flag


async def list_flags(
    session: AsyncSession, tenant_id: str, *, include_archived: bool = False, tag: str | None = None
) -> list[Flag]:
    bind_tenant(session, tenant_id)
    statement = select(Flag).order_by(Flag.key)
    if not include_archived:
        statement = statement.where(Flag.archived.is_(False))
    flags = list(await session.scalars(statement))
    return [flag for flag in flags if tag is None or tag in flag.tags]


async def get_flag(session: AsyncSession, tenant_id: str, key: str) -> Flag:
    bind_tenant(session, tenant_id)
    flag = await session.scalar(select(Flag).where(Flag.key == key))
    if flag is None:
        raise NotFound(f"No flag {key!r}.")
    return flag


async def update_flag(
    session: AsyncSession,
    tenant_id: str,
    key: str,
    patch: Mapping[str, Any],
    *,
    if_match: str | None = None,
    actor: Actor,
) -> Flag:
    """Apply a JSON merge patch to the definition (``description``, ``tags``, ``owner``,
    ``variations``, ``salt``, ``experiment``, ``archived``). New variations are checked
    against the flag's state in every environment."""
    flag = await get_flag(session, tenant_id, key)
    check_if_match(if_match, flag.version, required=False)
    before = definition_document(flag)
    if not isinstance(patch, Mapping):
        raise ValidationFailed("A flag patch is a JSON object.")
    fixed = {"key", "type"} & patch.keys()
    for name in fixed:
        if patch[name] != before[name]:
            raise ValidationFailed(f"A flag's {name} cannot change; define a new flag.")
    unknown = set(patch) - set(DEFINITION_FIELDS) - {"archived", "key", "type"}
    if unknown:
        raise ValidationFailed(f"Unknown flag fields: {', '.join(sorted(unknown))}.")
    after = merge_patch(before, dict(patch))
    for name in ("description", "owner", "salt"):
        after.setdefault(name, "" if name != "salt" else key)
        if not isinstance(after[name], str):
            raise ValidationFailed(f"{name} is a string.")
    if not isinstance(after.get("tags", []), list) or not all(
        isinstance(tag, str) for tag in after.get("tags", [])
    ):
        raise ValidationFailed("tags is a list of strings.")
    for name in ("experiment", "archived"):
        if not isinstance(after.get(name, False), bool):
            raise ValidationFailed(f"{name} is true or false.")
    after.setdefault("tags", [])
    after.setdefault("experiment", False)
    after.setdefault("archived", False)
    if not after.get("variations"):
        raise ValidationFailed("A flag has at least one variation.")
    diff = field_diff(before, after)
    if not diff:
        return flag
    states = await _states_of(session, flag)
    for environment, state in states:
        validate_flag_document(
            merged_flag(after, flag.version + state.version + 1, state_document(state)),
            environment.key,
        )
    if before["archived"] is False and after["archived"] is True:
        await _check_not_a_prerequisite(session, flag.key)
    version = await update_versioned_row(
        session,
        flag,
        {name: after[name] for name in (*DEFINITION_FIELDS, "archived")},
        changed_message="The flag changed since it was read.",
    )
    for environment, _ in states:
        record_flags_change(
            session,
            tenant_id,
            environment.key,
            await bump_environment_version(session, environment),
            keys=[key],
        )
    action = "flags.flag.update"
    if set(diff) == {"archived"}:
        action = "flags.flag.archive" if after["archived"] else "flags.flag.restore"
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type="flag",
        target_id=key,
        data={"version": version, "diff": diff},
    )
    await session.refresh(flag)
    return flag


async def archive_flag(
    session: AsyncSession, tenant_id: str, key: str, *, if_match: str | None = None, actor: Actor
) -> Flag:
    """Archive the flag: it leaves every snapshot (refused while another flag names it as a
    prerequisite). ``PATCH {"archived": false}`` restores it."""
    return await update_flag(
        session, tenant_id, key, {"archived": True}, if_match=if_match, actor=actor
    )


async def _check_not_a_prerequisite(session: AsyncSession, key: str) -> None:
    rows = await session.execute(
        select(Flag.key, FlagEnvironment.key, FlagState.prerequisites)
        .join(FlagState, FlagState.flag_id == Flag.id)
        .join(FlagEnvironment, FlagEnvironment.id == FlagState.environment_id)
        .where(Flag.archived.is_(False), Flag.key != key)
    )
    users = sorted(
        {
            f"{flag_key} ({environment})"
            for flag_key, environment, prerequisites in rows.all()
            if key in prerequisite_keys({"prerequisites": prerequisites})
        }
    )
    if users:
        raise Conflict(f"The flag {key!r} is a prerequisite of {', '.join(users)}.")

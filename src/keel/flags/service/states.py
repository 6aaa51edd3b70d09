"""A flag's state in one environment: on or off, targets, rules, fallthrough, prerequisites
and schedule. Every write is validated by the engine with its references checked (no
prerequisite cycle, no unknown segment), bumps the environment's version and is audited
with a diff."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.errors import NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.sqlite import hold_write_lock
from keel.core.versioned import update_versioned_row
from keel.flags.models import Flag, FlagEnvironment, FlagState
from keel.flags.service.changes import bump_environment_version, record_flags_change
from keel.flags.service.definitions import get_flag
from keel.flags.service.documents import (
    STATE_FIELDS,
    default_state,
    definition_document,
    field_diff,
    merge_patch,
    merged_flag,
    prerequisite_keys,
    segment_references,
    state_document,
    validate_flag_document,
)
from keel.flags.service.environments import get_environment
from keel.flags.service.segments import check_segments_exist


@dataclass(frozen=True)
class StateView:
    environment: FlagEnvironment
    flag: Flag
    state: FlagState

    def document(self) -> dict[str, Any]:
        return {
            "environment": self.environment.key,
            "key": self.flag.key,
            "version": self.state.version,
            **state_document(self.state),
            "updated_at": self.state.updated_at,
        }


async def get_state(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    *,
    for_update: bool = False,
) -> StateView:
    """The flag's state in the environment; ``for_update``: locked (and read afresh) until
    the transaction ends."""
    environment = await get_environment(session, tenant_id, environment_key)
    flag = await get_flag(session, tenant_id, key)
    query = select(FlagState).where(
        FlagState.flag_id == flag.id, FlagState.environment_id == environment.id
    )
    if for_update:
        await hold_write_lock(session)  # SQLite has no row locks
        query = query.with_for_update().execution_options(populate_existing=True)
    state = await session.scalar(query)
    if state is None:  # pragma: no cover - every flag has a state in every environment
        raise NotFound(f"No state of {key!r} in {environment_key!r}.")
    return StateView(environment, flag, state)


async def replace_state(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    document: Mapping[str, Any],
    *,
    if_match: str | None = None,
    comment: str = "",
    actor: Actor,
) -> StateView:
    """``PUT``: the whole state."""
    after = {name: document.get(name, default_state([])[name]) for name in STATE_FIELDS}
    return await _change_state(
        session,
        tenant_id,
        environment_key,
        key,
        lambda _: after,
        if_match=if_match,
        comment=comment,
        actor=actor,
    )


async def patch_state(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    patch: Mapping[str, Any],
    *,
    if_match: str | None = None,
    comment: str = "",
    actor: Actor,
) -> StateView:
    """``PATCH``: a JSON merge patch of the state's fields."""
    if not isinstance(patch, Mapping):
        raise ValidationFailed("A state patch is a JSON object.")
    unknown = set(patch) - set(STATE_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown state fields: {', '.join(sorted(unknown))}.")

    def patched(view: StateView) -> dict[str, Any]:
        merged = merge_patch(state_document(view.state), dict(patch))
        return {
            "on": merged.get("on", False),
            "off_variation": merged.get("off_variation"),
            "prerequisites": merged.get("prerequisites", []),
            "targets": merged.get("targets", []),
            "rules": merged.get("rules", []),
            "fallthrough": merged.get("fallthrough", {}),
            "schedule": merged.get("schedule", []),
        }

    return await _change_state(
        session,
        tenant_id,
        environment_key,
        key,
        patched,
        if_match=if_match,
        comment=comment,
        actor=actor,
    )


async def toggle(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    *,
    on: bool,
    comment: str = "",
    actor: Actor,
) -> StateView:
    """The kill switch: turn the flag on or off in one environment (no If-Match: an
    emergency does not wait for a fresh read)."""
    return await _change_state(
        session,
        tenant_id,
        environment_key,
        key,
        lambda view: {**state_document(view.state), "on": on},
        if_match=None,
        comment=comment,
        actor=actor,
        action="flags.state.toggle",
    )


async def _change_state(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    build: Callable[[StateView], dict[str, Any]],
    *,
    if_match: str | None,
    comment: str,
    actor: Actor,
    action: str = "flags.state.update",
) -> StateView:
    """The state ``build`` makes of the current one, written. With ``If-Match`` a state
    changed since is a 412; without, the last writer wins: the state is read locked, so
    writers at once take turns (two kill switches thrown at once both land, in some order)."""
    view = await get_state(session, tenant_id, environment_key, key, for_update=if_match is None)
    check_if_match(if_match, view.state.version, required=False)
    return await _write_state(
        session, view, build(view), comment=comment, actor=actor, action=action
    )


async def _write_state(
    session: AsyncSession,
    view: StateView,
    after: dict[str, Any],
    *,
    comment: str,
    actor: Actor,
    action: str = "flags.state.update",
) -> StateView:
    environment, flag, state = view.environment, view.flag, view.state
    tenant_id = environment.tenant_id
    if not isinstance(after["on"], bool):
        raise ValidationFailed("on is true or false.")
    before = state_document(state)
    diff = field_diff(before, after)
    if not diff:
        return view
    definition = definition_document(flag)
    validate_flag_document(
        merged_flag(definition, flag.version + state.version + 1, after), environment.key
    )
    await _check_references(session, environment, flag.key, after)
    version = await update_versioned_row(
        session, state, after, changed_message="The flag's state changed since it was read."
    )
    environment_version = await bump_environment_version(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type="flag_state",
        target_id=f"{environment.key}/{flag.key}",
        data={"version": version, "diff": diff},
        reason=comment or None,
    )
    record_flags_change(session, tenant_id, environment.key, environment_version, keys=[flag.key])
    await session.refresh(state)
    await session.refresh(environment)
    return StateView(environment, flag, state)


async def _check_references(
    session: AsyncSession, environment: FlagEnvironment, key: str, state: Mapping[str, Any]
) -> None:
    """Prerequisites name existing, unarchived flags without a cycle; ``in_segment``
    clauses name segments of the environment."""
    prerequisites = prerequisite_keys(state)
    if key in prerequisites:
        raise ValidationFailed(f"The flag {key!r} cannot be its own prerequisite.")
    if prerequisites:
        graph: dict[str, list[str]] = {}
        rows = await session.execute(
            select(Flag.key, Flag.archived, FlagState.prerequisites)
            .join(FlagState, FlagState.flag_id == Flag.id)
            .where(FlagState.environment_id == environment.id)
        )
        active = set()
        for flag_key, archived, flag_prerequisites in rows.all():
            if not archived:
                active.add(flag_key)
            graph[flag_key] = prerequisite_keys({"prerequisites": flag_prerequisites})
        missing = sorted(set(prerequisites) - active)
        if missing:
            raise ValidationFailed(f"Prerequisites name no active flag: {', '.join(missing)}.")
        graph[key] = prerequisites
        cycle = _find_cycle(graph, key)
        if cycle:
            raise ValidationFailed(f"Prerequisites form a cycle: {' -> '.join(cycle)}.")
    await check_segments_exist(session, environment, segment_references(state.get("rules") or ()))


def _find_cycle(graph: Mapping[str, Sequence[str]], start: str) -> list[str] | None:
    """A path from ``start`` back to itself through ``graph``, if any."""
    path: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node == start and path:
            return [*path, node]
        if node in seen:
            return None
        seen.add(node)
        path.append(node)
        for successor in graph.get(node, ()):
            found = visit(successor)
            if found:
                return found
        path.pop()
        return None

    return visit(start)

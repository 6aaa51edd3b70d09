"""The flags service's logic: environments, flag definitions, per-environment states,
segments, snapshots, server-side evaluation, SDK events, experiment results and the stale
listing. Plain arguments in, plain objects out: the router, the CLI and the tests call the
same functions.

Every write is validated by the engine of :mod:`keel_client.flags` (the one the SDKs
evaluate with), recorded as an audit event with a diff of the fields it changed, and
recorded as a change on the ``flags`` stream (subject: the environment's key, data
``{"version": n, "keys": [flag keys], "segments": [segment keys]}``) in the caller's unit of
work. ``version`` is the environment's own counter, bumped by every change of what its
snapshot holds: the snapshot's ``version`` and ETag.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, distinct, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.changes import record_change
from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.core.versioned import update_versioned_row
from keel.flags import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
    experiments,
)
from keel.flags.auth import DEFINITIONS
from keel.flags.models import (
    ExperimentEvent,
    Flag,
    FlagEnvironment,
    FlagEvaluation,
    FlagState,
    Segment,
)
from keel_client import flags as engine

#: The change stream of flag changes; the subject is the environment's key.
FLAGS_STREAM = "flags"
ENVIRONMENT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: The fields of a flag's definition a PATCH may change.
DEFINITION_FIELDS = ("description", "tags", "owner", "variations", "salt", "experiment")
#: The fields of a flag's state in an environment.
STATE_FIELDS = (
    "on",
    "off_variation",
    "prerequisites",
    "targets",
    "rules",
    "fallthrough",
    "schedule",
)
SEGMENT_FIELDS = ("description", "included", "excluded", "rules")
#: An audit diff keeps a value up to this many bytes of JSON (a huge target list is
#: summarised by its size).
MAX_AUDITED_VALUE_BYTES = 16 * 1024
#: How far in the past and the future an SDK event's time may be.
MAX_EVENT_AGE = timedelta(days=7)
MAX_EVENT_SKEW = timedelta(minutes=5)
#: A process writes a flag's last evaluation time at most this often.
EVALUATION_WRITE_INTERVAL_SECONDS = 60.0
#: Compiled snapshots kept for server-side evaluation (one per environment version).
COMPILED_SNAPSHOTS_KEPT = 64


# -- names and small rules ------------------------------------------------------------------


def check_environment_key(key: str) -> str:
    if not ENVIRONMENT_PATTERN.fullmatch(key):
        raise ValidationFailed(
            "An environment key is 1-63 lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit."
        )
    if key == DEFINITIONS:
        raise ValidationFailed(
            f"{DEFINITIONS!r} is reserved (the permission flags:{DEFINITIONS}:admin)."
        )
    return key


def check_key(kind: str, key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            f"A {kind} key is 1-128 letters, digits, '_', '.' and '-', starting with a "
            "letter or digit."
        )
    return key


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = merge_patch(merged.get(name), value)
    return merged


def _audited(value: Any) -> Any:
    encoded = json.dumps(value, separators=(",", ":"), default=str)
    if len(encoded) <= MAX_AUDITED_VALUE_BYTES:
        return value
    return {"omitted": "too large for the audit event", "bytes": len(encoded)}


def field_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: {"before": ..., "after": ...}}`` of the fields whose value changed."""
    return {
        name: {"before": _audited(before.get(name)), "after": _audited(after.get(name))}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _problems(kind: str, problems: Sequence[Any], **extensions: Any) -> ValidationFailed:
    listed = [str(problem) for problem in problems]
    return ValidationFailed(
        f"The {kind} is not valid: {'; '.join(listed[:5])}", problems=listed, **extensions
    )


def default_variations(flag_type: str) -> list[dict[str, Any]]:
    if flag_type != "boolean":
        raise ValidationFailed(f"A {flag_type} flag needs its variations.")
    return [{"id": "on", "value": True}, {"id": "off", "value": False}]


def _variation_id(variation: Mapping[str, Any]) -> str | None:
    identifier = variation.get("id") if isinstance(variation, Mapping) else None
    return None if identifier is None else str(identifier)


def default_state(variations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A new flag's state in each environment: off, serving the last variation when off and
    the first when turned on (``off``/``on`` for a default boolean flag)."""
    # Not yet validated here: a variation without an id is the validator's to name, not a
    # KeyError's.
    first = _variation_id(variations[0]) if variations else None
    last = _variation_id(variations[-1]) if variations else None
    return {
        "on": False,
        "off_variation": last,
        "prerequisites": [],
        "targets": [],
        "rules": [],
        "fallthrough": {"variation": first} if first is not None else {},
        "schedule": [],
    }


def definition_document(flag: Flag) -> dict[str, Any]:
    return {
        "key": flag.key,
        "description": flag.description,
        "tags": list(flag.tags),
        "owner": flag.owner,
        "type": flag.type,
        "variations": list(flag.variations),
        "salt": flag.salt,
        "experiment": flag.experiment,
        "archived": flag.archived,
    }


def state_document(state: FlagState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in STATE_FIELDS}


def merged_flag(
    definition: Mapping[str, Any], version: int, state: Mapping[str, Any]
) -> dict[str, Any]:
    """The shared model's flag document: the definition merged with one environment's
    state. ``version`` is the definition's version plus the state's (both only grow)."""
    return {
        "key": definition["key"],
        "version": version,
        "type": definition["type"],
        "variations": definition["variations"],
        "salt": definition["salt"],
        "experiment": definition["experiment"],
        **{name: state[name] for name in STATE_FIELDS},
    }


def segment_document(segment: Segment) -> dict[str, Any]:
    return {
        "key": segment.key,
        "version": segment.version,
        "included": list(segment.included),
        "excluded": list(segment.excluded),
        "rules": list(segment.rules),
    }


def _clauses(rules: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for rule in rules:
        if isinstance(rule, Mapping):
            for clause in rule.get("clauses") or ():
                if isinstance(clause, Mapping):
                    yield clause


def segment_references(rules: Iterable[Any]) -> set[str]:
    """The segment keys ``in_segment`` clauses of ``rules`` name."""
    found: set[str] = set()
    for clause in _clauses(rules):
        if clause.get("op") == "in_segment":
            found.update(str(value) for value in clause.get("values") or ())
    return found


def prerequisite_keys(state: Mapping[str, Any]) -> list[str]:
    return [
        str(entry.get("key"))
        for entry in state.get("prerequisites") or ()
        if isinstance(entry, Mapping)
    ]


# -- environments ---------------------------------------------------------------------------


def _record_change(
    session: AsyncSession,
    tenant_id: str,
    environment: str,
    version: int,
    *,
    keys: Iterable[str] = (),
    segments: Iterable[str] = (),
    **extra: Any,
) -> None:
    record_change(
        session,
        tenant_id,
        FLAGS_STREAM,
        environment,
        {"version": version, "keys": sorted(set(keys)), "segments": sorted(set(segments)), **extra},
    )


async def _bump(session: AsyncSession, environment: FlagEnvironment) -> int:
    """Move the environment's version on by one (row-locked until commit); the new one."""
    await session.execute(
        update(FlagEnvironment)
        .where(FlagEnvironment.id == environment.id)
        .values(version=FlagEnvironment.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    version = await session.scalar(
        select(FlagEnvironment.version).where(FlagEnvironment.id == environment.id)
    )
    assert version is not None
    return int(version)


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
    await _flush_unique(session, message)
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
    _record_change(session, tenant_id, key, environment.version)
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
    _record_change(session, tenant_id, key, version, deleted=True)


# -- flag definitions -----------------------------------------------------------------------


async def _states_of(session: AsyncSession, flag: Flag) -> list[tuple[FlagEnvironment, FlagState]]:
    rows = await session.execute(
        select(FlagEnvironment, FlagState)
        .join(FlagState, FlagState.environment_id == FlagEnvironment.id)
        .where(FlagState.flag_id == flag.id)
        .order_by(FlagEnvironment.key)
    )
    return [(row[0], row[1]) for row in rows.all()]


def _validate_flag_document(document: Mapping[str, Any], environment: str | None = None) -> None:
    problems = engine.validate_flag(dict(document))
    if problems:
        where = {"environment": environment} if environment else {}
        raise _problems("flag", problems, **where)


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
    _validate_flag_document(merged_flag(definition, 2, state))
    message = f"The flag {key!r} exists already."
    if await session.scalar(select(Flag.id).where(Flag.key == key)):
        raise Conflict(message)
    flag = Flag(
        tenant_id=tenant_id,
        **{name: value for name, value in definition.items() if name != "archived"},
    )
    session.add(flag)
    await _flush_unique(session, message)
    for environment in await session.scalars(select(FlagEnvironment)):
        session.add(
            FlagState(tenant_id=tenant_id, flag_id=flag.id, environment_id=environment.id, **state)
        )
        await session.flush()
        _record_change(
            session, tenant_id, environment.key, await _bump(session, environment), keys=[key]
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
        _validate_flag_document(
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
        _record_change(
            session, tenant_id, environment.key, await _bump(session, environment), keys=[key]
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


# -- states ---------------------------------------------------------------------------------


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
    _validate_flag_document(
        merged_flag(definition, flag.version + state.version + 1, after), environment.key
    )
    await _check_references(session, environment, flag.key, after)
    version = await update_versioned_row(
        session, state, after, changed_message="The flag's state changed since it was read."
    )
    environment_version = await _bump(session, environment)
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
    _record_change(session, tenant_id, environment.key, environment_version, keys=[flag.key])
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
    await _check_segments_exist(session, environment, segment_references(state.get("rules") or ()))


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


# -- segments -------------------------------------------------------------------------------


def _validate_segment_document(document: Mapping[str, Any]) -> None:
    problems = engine.validate_segment(dict(document))
    if problems:
        raise _problems("segment", problems)


async def list_segments(
    session: AsyncSession, tenant_id: str, environment_key: str
) -> tuple[FlagEnvironment, list[Segment]]:
    environment = await get_environment(session, tenant_id, environment_key)
    segments = await session.scalars(
        select(Segment).where(Segment.environment_id == environment.id).order_by(Segment.key)
    )
    return environment, list(segments)


async def get_segment(
    session: AsyncSession, tenant_id: str, environment_key: str, key: str
) -> tuple[FlagEnvironment, Segment]:
    environment = await get_environment(session, tenant_id, environment_key)
    segment = await session.scalar(
        select(Segment).where(Segment.environment_id == environment.id, Segment.key == key)
    )
    if segment is None:
        raise NotFound(f"No segment {key!r} in {environment_key!r}.")
    return environment, segment


def _segment_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "description": document.get("description", ""),
        "included": list(document.get("included") or []),
        "excluded": list(document.get("excluded") or []),
        "rules": list(document.get("rules") or []),
    }


async def create_segment(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    document: Mapping[str, Any],
    *,
    actor: Actor,
) -> tuple[FlagEnvironment, Segment]:
    environment = await get_environment(session, tenant_id, environment_key)
    check_key("segment", key)
    fields = _segment_fields(document)
    _validate_segment_document({"key": key, "version": 1, **fields})
    await _check_segment_references(session, environment, key, fields["rules"])
    message = f"The segment {key!r} exists already in {environment_key!r}."
    exists = await session.scalar(
        select(Segment.id).where(Segment.environment_id == environment.id, Segment.key == key)
    )
    if exists:
        raise Conflict(message)
    segment = Segment(tenant_id=tenant_id, environment_id=environment.id, key=key, **fields)
    session.add(segment)
    await _flush_unique(session, message)
    version = await _bump(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.create",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
        data={"diff": field_diff({}, fields)},
    )
    _record_change(session, tenant_id, environment_key, version, segments=[key])
    return environment, segment


async def replace_segment(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    document: Mapping[str, Any],
    *,
    if_match: str | None = None,
    actor: Actor,
) -> tuple[FlagEnvironment, Segment]:
    environment, segment = await get_segment(session, tenant_id, environment_key, key)
    check_if_match(if_match, segment.version, required=False)
    before = {name: getattr(segment, name) for name in SEGMENT_FIELDS}
    after = _segment_fields(document)
    diff = field_diff(before, after)
    if not diff:
        return environment, segment
    _validate_segment_document({"key": key, "version": segment.version + 1, **after})
    await _check_segment_references(session, environment, key, after["rules"])
    version = await update_versioned_row(
        session, segment, after, changed_message="The segment changed since it was read."
    )
    environment_version = await _bump(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.update",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
        data={"version": version, "diff": diff},
    )
    _record_change(session, tenant_id, environment_key, environment_version, segments=[key])
    await session.refresh(segment)
    return environment, segment


async def delete_segment(
    session: AsyncSession, tenant_id: str, environment_key: str, key: str, *, actor: Actor
) -> None:
    """Delete a segment no flag or segment of the environment names (409 otherwise)."""
    environment, segment = await get_segment(session, tenant_id, environment_key, key)
    users = sorted(
        flag_key
        for flag_key, rules in (
            await session.execute(
                select(Flag.key, FlagState.rules)
                .join(FlagState, FlagState.flag_id == Flag.id)
                .where(FlagState.environment_id == environment.id)
            )
        ).all()
        if key in segment_references(rules)
    )
    users += sorted(
        f"segment {other}"
        for other, rules in (
            await session.execute(
                select(Segment.key, Segment.rules).where(
                    Segment.environment_id == environment.id, Segment.key != key
                )
            )
        ).all()
        if key in segment_references(rules)
    )
    if users:
        raise Conflict(f"The segment {key!r} is used by {', '.join(users)}.")
    await session.delete(segment)
    await session.flush()
    version = await _bump(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.delete",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
    )
    _record_change(session, tenant_id, environment_key, version, segments=[key])


async def _check_segment_references(
    session: AsyncSession, environment: FlagEnvironment, key: str, rules: Sequence[Any]
) -> None:
    named = segment_references(rules)
    if key in named:
        raise ValidationFailed(f"The segment {key!r} cannot contain itself.")
    await _check_segments_exist(session, environment, named)


async def _check_segments_exist(
    session: AsyncSession, environment: FlagEnvironment, named: set[str]
) -> None:
    """The segments ``in_segment`` clauses name are segments of the environment."""
    if not named:
        return
    known = set(
        await session.scalars(
            select(Segment.key).where(
                Segment.environment_id == environment.id, Segment.key.in_(sorted(named))
            )
        )
    )
    missing = sorted(named - known)
    if missing:
        raise ValidationFailed(
            f"Rules name segments {environment.key!r} does not have: {', '.join(missing)}."
        )


# -- snapshots ------------------------------------------------------------------------------


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


async def snapshot(session: AsyncSession, tenant_id: str, environment_key: str) -> dict[str, Any]:
    """The shared model's snapshot of an environment: every unarchived flag merged with its
    state there, and every segment."""
    environment = await get_environment(session, tenant_id, environment_key)
    rows = await session.execute(
        select(Flag, FlagState)
        .join(FlagState, FlagState.flag_id == Flag.id)
        .where(FlagState.environment_id == environment.id, Flag.archived.is_(False))
        .order_by(Flag.key)
    )
    flags = {
        flag.key: merged_flag(
            definition_document(flag), flag.version + state.version, state_document(state)
        )
        for flag, state in rows.all()
    }
    segments = await session.scalars(
        select(Segment).where(Segment.environment_id == environment.id).order_by(Segment.key)
    )
    return {
        "environment": environment.key,
        "version": environment.version,
        "flags": flags,
        "segments": {segment.key: segment_document(segment) for segment in segments},
    }


# -- server-side evaluation -----------------------------------------------------------------

_compiled: OrderedDict[tuple[str, str, int], Any] = OrderedDict()


async def _compiled_snapshot(
    session: AsyncSession, tenant_id: str, environment_key: str
) -> tuple[str, int, Any]:
    environment_id, version = await environment_version(session, tenant_id, environment_key)
    cache_key = (tenant_id, environment_id, version)
    store = _compiled.get(cache_key)
    if store is None:
        document = await snapshot(session, tenant_id, environment_key)
        version = int(document["version"])
        cache_key = (tenant_id, environment_id, version)
        store = engine.FlagStore(document)
        _compiled[cache_key] = store
        while len(_compiled) > COMPILED_SNAPSHOTS_KEPT:
            _compiled.popitem(last=False)
    else:
        _compiled.move_to_end(cache_key)
    return environment_id, version, store


async def evaluate(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    contexts: Sequence[Mapping[str, Any]],
    keys: Sequence[str] | None = None,
) -> tuple[int, list[dict[str, dict[str, Any]]]]:
    """Evaluate ``keys`` (default: every flag) for each of ``contexts`` with the SDK's engine
    on the environment's current snapshot:
    ``(version, [{key: {"value", "variation", "reason"}}, ...])``, one map per context."""
    environment_id, version, store = await _compiled_snapshot(session, tenant_id, environment_key)
    known = store.keys()
    names = list(dict.fromkeys(keys)) if keys is not None else known
    results = [
        {key: store.evaluate(key, context).to_dict() for key in names} for context in contexts
    ]
    found = [key for key in names if key in set(known)]
    await record_evaluations(session, tenant_id, environment_id, dict.fromkeys(found, utcnow()))
    return version, results


#: The last evaluation time this process wrote for each (tenant, environment, flag).
_evaluation_written: dict[tuple[str, str, str], datetime] = {}


async def record_evaluations(
    session: AsyncSession,
    tenant_id: str,
    environment_id: str,
    evaluated: Mapping[str, datetime],
) -> None:
    """Move each flag's last evaluation time forward, writing at most once a minute of
    evaluation time per flag from this process: the stale listing needs days, not
    seconds."""
    interval = timedelta(seconds=EVALUATION_WRITE_INTERVAL_SECONDS)
    rows = []
    for key, at in evaluated.items():
        marker = (tenant_id, environment_id, key)
        written = _evaluation_written.get(marker)
        if written is not None and written <= at < written + interval:
            continue
        _evaluation_written[marker] = at
        rows.append((key, at))
    if len(_evaluation_written) > 100_000:
        _evaluation_written.clear()
    for key, at in rows:
        moved = await session.execute(
            update(FlagEvaluation)
            .where(
                FlagEvaluation.environment_id == environment_id,
                FlagEvaluation.flag_key == key,
                FlagEvaluation.last_evaluated_at < at,
            )
            .values(last_evaluated_at=at)
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0):
            continue
        exists = await session.scalar(
            select(FlagEvaluation.id).where(
                FlagEvaluation.environment_id == environment_id, FlagEvaluation.flag_key == key
            )
        )
        if exists:
            continue
        try:
            async with session.begin_nested():
                session.add(
                    FlagEvaluation(
                        tenant_id=tenant_id,
                        environment_id=environment_id,
                        flag_key=key,
                        last_evaluated_at=at,
                    )
                )
        except IntegrityError:
            continue  # a concurrent request recorded it first: recent enough


# -- SDK events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventsOutcome:
    accepted: int
    ignored: int


async def ingest_events(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    events: Sequence[Any],
    *,
    hash_context_key: Any,
) -> EventsOutcome:
    """Store a batch of SDK events: exposures and tracked events become experiment events
    (the context key as ``hash_context_key(key)``, never in the clear); evaluation
    summaries move the flags' last evaluation times. Times more than
    :data:`MAX_EVENT_AGE` old or :data:`MAX_EVENT_SKEW` ahead refuse the batch (422);
    exposures and summaries of flags or variations the environment does not know are
    counted as ignored."""
    environment = await get_environment(session, tenant_id, environment_key)
    now = utcnow()
    late = [
        index
        for index, event in enumerate(events)
        if event.time.tzinfo is None
        or event.time < now - MAX_EVENT_AGE
        or event.time > now + MAX_EVENT_SKEW
    ]
    if late:
        raise ValidationFailed(
            "Event times are aware, at most 7 days old and at most 5 minutes ahead.",
            events=late[:50],
        )
    variations = {
        flag.key: {str(entry.get("id")) for entry in flag.variations}
        for flag in await session.scalars(select(Flag).where(Flag.archived.is_(False)))
    }
    rows: list[dict[str, Any]] = []
    evaluated: dict[str, datetime] = {}
    ignored = 0
    for event in events:
        if event.kind == "exposure":
            if event.variation not in variations.get(event.flag, ()):
                ignored += 1
                continue
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "environment_id": environment.id,
                    "kind": "exposure",
                    "flag_key": event.flag,
                    "variation": event.variation,
                    "context_hash": hash_context_key(event.context_key),
                    "occurred_at": event.time,
                    "received_at": now,
                }
            )
            evaluated[event.flag] = max(event.time, evaluated.get(event.flag, event.time))
        elif event.kind == "track":
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "environment_id": environment.id,
                    "kind": "track",
                    "event_name": event.event,
                    "value": event.value,
                    "context_hash": hash_context_key(event.context_key),
                    "occurred_at": event.time,
                    "received_at": now,
                }
            )
        else:
            if event.flag not in variations:
                ignored += 1
                continue
            evaluated[event.flag] = max(event.time, evaluated.get(event.flag, event.time))
    if rows:
        await session.execute(insert(ExperimentEvent), rows)
    if evaluated:
        await record_evaluations(session, tenant_id, environment.id, evaluated)
    return EventsOutcome(len(events) - ignored, ignored)


# -- experiment results ---------------------------------------------------------------------


@dataclass(frozen=True)
class VariationResult:
    variation: str
    exposures: int
    conversions: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None
    significant: bool | None


@dataclass(frozen=True)
class SampleRatio:
    expected_weights: dict[str, int]
    chi_square: float
    p_value: float
    warning: bool


@dataclass(frozen=True)
class ExperimentResults:
    environment: str
    flag: str
    event: str | None
    control: str
    variations: list[VariationResult]
    sample_ratio: SampleRatio | None


def effective_fallthrough(state: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The fallthrough in force at ``now``: the latest schedule step whose time has passed,
    else the state's own."""
    chosen: tuple[datetime, dict[str, Any]] | None = None
    for step in state.get("schedule") or ():
        at = _parse_time(step.get("at")) if isinstance(step, Mapping) else None
        if at is not None and at <= now and (chosen is None or at >= chosen[0]):
            chosen = (at, dict(step.get("fallthrough") or {}))
    return chosen[1] if chosen else dict(state.get("fallthrough") or {})


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=utcnow().tzinfo)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else None
    return None


def rollout_weights(fallthrough: Mapping[str, Any]) -> dict[str, int] | None:
    rollout = fallthrough.get("rollout")
    if not isinstance(rollout, Mapping):
        return None
    weights: dict[str, int] = {}
    for entry in rollout.get("variations") or ():
        if isinstance(entry, Mapping):
            variation = str(entry.get("variation"))
            weights[variation] = weights.get(variation, 0) + int(entry.get("weight") or 0)
    return weights


async def experiment_results(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    *,
    event: str | None = None,
) -> ExperimentResults:
    """Per variation: distinct contexts exposed, those of them that sent ``event`` after
    their first exposure, the rate with its 95 % Wilson interval, and a two-proportion
    z-test against the control (the first variation); plus the sample-ratio-mismatch test
    of exposures against the fallthrough rollout's weights."""
    view = await get_state(session, tenant_id, environment_key, key)
    environment_id = view.environment.id
    exposed = (
        select(
            ExperimentEvent.context_hash.label("context_hash"),
            ExperimentEvent.variation.label("variation"),
            func.min(ExperimentEvent.occurred_at).label("first_at"),
        )
        .where(
            ExperimentEvent.environment_id == environment_id,
            ExperimentEvent.kind == "exposure",
            ExperimentEvent.flag_key == key,
        )
        .group_by(ExperimentEvent.context_hash, ExperimentEvent.variation)
        .subquery()
    )
    exposures = {
        str(variation): int(count)
        for variation, count in (
            await session.execute(
                select(exposed.c.variation, func.count()).group_by(exposed.c.variation)
            )
        ).all()
    }
    conversions: dict[str, int] = {}
    if event is not None:
        rows = await session.execute(
            select(exposed.c.variation, func.count(distinct(exposed.c.context_hash)))
            .join(
                ExperimentEvent,
                and_(
                    ExperimentEvent.context_hash == exposed.c.context_hash,
                    ExperimentEvent.environment_id == environment_id,
                    ExperimentEvent.kind == "track",
                    ExperimentEvent.event_name == event,
                    ExperimentEvent.occurred_at >= exposed.c.first_at,
                ),
            )
            .group_by(exposed.c.variation)
        )
        conversions = {str(variation): int(count) for variation, count in rows.all()}
    variation_ids = [str(entry.get("id")) for entry in view.flag.variations]
    control = variation_ids[0]
    results = []
    for variation in variation_ids:
        trials = exposures.get(variation, 0)
        successes = conversions.get(variation, 0) if event is not None else None
        rate = interval = test = None
        if successes is not None and trials:
            rate = successes / trials
            interval = experiments.wilson_interval(successes, trials)
            if variation != control:
                test = experiments.two_proportion_z_test(
                    conversions.get(control, 0), exposures.get(control, 0), successes, trials
                )
        results.append(
            VariationResult(
                variation=variation,
                exposures=trials,
                conversions=successes,
                rate=rate,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                z=test.z if test else None,
                p_value=test.p_value if test else None,
                significant=(test.p_value < experiments.SIGNIFICANCE_LEVEL) if test else None,
            )
        )
    sample_ratio = None
    weights = rollout_weights(effective_fallthrough(state_document(view.state), utcnow()))
    if weights is not None:
        tested = experiments.sample_ratio_test(exposures, weights)
        if tested is not None:
            sample_ratio = SampleRatio(
                expected_weights=weights,
                chi_square=tested.chi_square,
                p_value=tested.p_value,
                warning=tested.is_mismatch,
            )
    return ExperimentResults(environment_key, key, event, control, results, sample_ratio)


# -- governance -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StaleFlag:
    key: str
    reasons: list[str]
    last_evaluated_at: datetime | None
    serving: str | None


def fully_rolled_out(state: Mapping[str, Any], now: datetime) -> str | None:
    """The one variation everybody gets when the flag is on with no targets, rules or
    prerequisites, no schedule step still to come, and a fallthrough serving one variation
    (or a rollout giving one variation 100 %); else ``None``."""
    if not state.get("on") or state.get("targets") or state.get("rules"):
        return None
    if state.get("prerequisites"):
        return None
    for step in state.get("schedule") or ():
        at = _parse_time(step.get("at")) if isinstance(step, Mapping) else None
        if at is None or at > now:
            return None
    fallthrough = effective_fallthrough(state, now)
    if isinstance(fallthrough.get("variation"), str):
        return str(fallthrough["variation"])
    weights = rollout_weights(fallthrough)
    if weights:
        full = [variation for variation, weight in weights.items() if weight >= 100_000]
        if len(full) == 1 and all(w == 0 for v, w in weights.items() if v != full[0]):
            return full[0]
    return None


async def stale_flags(
    session: AsyncSession, tenant_id: str, environment_key: str, *, days: int
) -> list[StaleFlag]:
    """Flags of the environment not evaluated for ``days`` days (a flag younger than that
    counts from its creation), and flags fully rolled out (:func:`fully_rolled_out`)."""
    environment = await get_environment(session, tenant_id, environment_key)
    now = utcnow()
    cutoff = now - timedelta(days=days)
    last_evaluated = {
        key: at
        for key, at in (
            await session.execute(
                select(FlagEvaluation.flag_key, FlagEvaluation.last_evaluated_at).where(
                    FlagEvaluation.environment_id == environment.id
                )
            )
        ).all()
    }
    rows = await session.execute(
        select(Flag, FlagState)
        .join(FlagState, FlagState.flag_id == Flag.id)
        .where(FlagState.environment_id == environment.id, Flag.archived.is_(False))
        .order_by(Flag.key)
    )
    found = []
    for flag, state in rows.all():
        reasons = []
        last = last_evaluated.get(flag.key)
        if (last or flag.created_at) < cutoff:
            reasons.append("not-evaluated")
        serving = fully_rolled_out(state_document(state), now)
        if serving is not None:
            reasons.append("fully-rolled-out")
        if reasons:
            found.append(StaleFlag(flag.key, reasons, last, serving))
    return found


async def _flush_unique(session: AsyncSession, message: str) -> None:
    """Flush; a unique constraint lost to a concurrent writer is a 409, not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(message) from None

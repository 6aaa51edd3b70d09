"""Writes: change sets, key deletions and rollbacks, each a new immutable revision.

A write reads the environment's current revision, computes the new snapshot and moves the
revision on with a compare-and-set (``UPDATE ... WHERE revision = :read``). A write that
loses the race either fails with 412 (it named the revision it saw in ``If-Match``) or
starts again from the newer snapshot, so a change set never overwrites keys it did not name."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config.models import ConfigEnvironment, ConfigRevision
from keel.config.service.environments import read_snapshot
from keel.config.service.state import (
    CONFIG_STREAM,
    EnvironmentState,
    change_subject,
    current_state,
    flush_unique,
)
from keel.config.service.validation import (
    Diff,
    apply_change_set,
    check_against_schema,
    check_key,
    check_message,
    check_snapshot_size,
    diff_values,
)
from keel.core.audit import Actor, record_event
from keel.core.changes import record_change
from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from keel.core.http import check_if_match
from keel.core.input_rules import InputRefused, check_json_value

#: Attempts of a write that keeps losing the compare-and-set to concurrent writers.
_WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class WriteOutcome:
    """The environment after a write: ``created`` is False when the write changed nothing
    (no revision was made; ``revision`` is the current one)."""

    revision: ConfigRevision
    created: bool


async def write_values(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    *,
    set_values: Mapping[str, Any] | None = None,
    unset: Sequence[str] = (),
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """One atomic change set: every key set and unset in one new revision, or none."""
    set_values = dict(set_values or {})
    unset = list(dict.fromkeys(unset))
    if not set_values and not unset:
        raise ValidationFailed("A change set sets or unsets at least one key.")
    try:
        check_json_value(set_values)  # what the API's edge refused, from the CLI too
    except InputRefused as refused:
        raise ValidationFailed(str(refused)) from None
    apply_change_set({}, set_values, unset)  # names and references, before any query
    return await _write_change_set(
        session,
        tenant_id,
        application,
        environment,
        set_values,
        unset,
        message=message,
        if_match=if_match,
        actor=actor,
    )


async def delete_key(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    key: str,
    *,
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """Remove one key (404 when the environment does not hold it)."""
    check_key(key)
    return await _write_change_set(
        session,
        tenant_id,
        application,
        environment,
        {},
        [key],
        message=message,
        if_match=if_match,
        actor=actor,
        must_hold=key,
    )


async def _write_change_set(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    set_values: dict[str, Any],
    unset: list[str],
    *,
    message: str,
    if_match: str | None,
    actor: Actor,
    must_hold: str | None = None,
) -> WriteOutcome:
    """A change set applied to the current values as a new revision (``config.env.write``);
    404 when the environment does not hold ``must_hold``."""

    def build(state: EnvironmentState) -> dict[str, Any]:
        if must_hold is not None and must_hold not in state.values:
            raise NotFound(f"No key {must_hold!r} in {change_subject(application, environment)}.")
        return apply_change_set(state.values, set_values, unset)

    return await write_revision(
        session,
        tenant_id,
        application,
        environment,
        build,
        operation="write",
        source=None,
        message=message,
        if_match=if_match,
        actor=actor,
        action="config.env.write",
    )


async def rollback(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    to_revision: int,
    *,
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """A new revision holding the values of ``to_revision`` (checked against today's schema)."""
    target = await read_snapshot(session, tenant_id, application, environment, to_revision)

    def build(state: EnvironmentState) -> dict[str, Any]:
        return dict(target.values)

    return await write_revision(
        session,
        tenant_id,
        application,
        environment,
        build,
        operation="rollback",
        source=f"revision {to_revision}",
        message=message or f"rollback to revision {to_revision}",
        if_match=if_match,
        actor=actor,
        action="config.env.rollback",
        extra_audit={"to_revision": to_revision},
    )


async def write_revision(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    build: Callable[[EnvironmentState], dict[str, Any]],
    *,
    operation: str,
    source: str | None,
    message: str,
    if_match: str | None,
    actor: Actor,
    action: str,
    extra_audit: Mapping[str, Any] | None = None,
) -> WriteOutcome:
    check_message(message)
    for _ in range(_WRITE_ATTEMPTS):
        state = await current_state(session, tenant_id, application, environment)
        check_if_match(if_match, state.revision, required=False)
        values = build(state)
        check_snapshot_size(values)
        check_against_schema(state.json_schema, values)
        changes = diff_values(state.values, values)
        if changes.is_empty:
            return WriteOutcome(await revision_row(session, state), created=False)
        number = state.revision + 1
        moved = await session.execute(
            update(ConfigEnvironment)
            .where(
                ConfigEnvironment.id == state.environment_id,
                ConfigEnvironment.revision == state.revision,
            )
            .values(revision=number, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0) == 1:
            break
        # Another writer moved the revision on: read it again (a named revision now fails).
    else:
        raise Conflict("The environment is changing too often; try again.")
    changed = {
        "set": sorted([*changes.added, *changes.changed]),
        "unset": sorted(changes.removed),
    }
    revision = ConfigRevision(
        tenant_id=tenant_id,
        environment_id=state.environment_id,
        number=number,
        values=values,
        changes=changed,
        operation=operation,
        source=source,
        message=message,
        author_type=actor.type,
        author_id=actor.id,
    )
    session.add(revision)
    await flush_unique(session, "The environment changed since it was read.", PreconditionFailed)
    subject = change_subject(application, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type="config_environment",
        target_id=subject,
        data={"revision": number, **changed, **(extra_audit or {})},
        reason=message or None,
    )
    record_change(session, tenant_id, CONFIG_STREAM, subject, _change_event(number, changes))
    return WriteOutcome(revision, created=True)


#: A change set's new values ride in its change event up to this size (JSON bytes), so a
#: watcher applies them without reading the snapshot back; larger ones name the keys only.
MAX_EVENT_VALUES_BYTES = 16 * 1024


def _change_event(number: int, changes: Diff) -> dict[str, Any]:
    event: dict[str, Any] = {"revision": number, "keys": changes.keys()}
    values = {**changes.added, **{key: pair["after"] for key, pair in changes.changed.items()}}
    if len(json.dumps(values, separators=(",", ":"))) <= MAX_EVENT_VALUES_BYTES:
        event["set"] = values
        event["unset"] = sorted(changes.removed)
    return event


async def revision_row(session: AsyncSession, state: EnvironmentState) -> ConfigRevision:
    row = await session.scalar(
        select(ConfigRevision).where(
            ConfigRevision.environment_id == state.environment_id,
            ConfigRevision.number == state.revision,
        )
    )
    assert row is not None
    return row

"""Segments: named sets of contexts (included and excluded keys, rules) of one environment,
which flag rules name with ``in_segment``. A segment in use cannot be deleted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor, record_event
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.versioned import update_versioned_row
from keel.flags.models import Flag, FlagEnvironment, FlagState, Segment
from keel.flags.service.changes import bump_environment_version, flush_unique, record_flags_change
from keel.flags.service.documents import (
    SEGMENT_FIELDS,
    check_key,
    field_diff,
    segment_references,
    validate_segment_document,
)
from keel.flags.service.environments import get_environment


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
    validate_segment_document({"key": key, "version": 1, **fields})
    await _check_segment_references(session, environment, key, fields["rules"])
    message = f"The segment {key!r} exists already in {environment_key!r}."
    exists = await session.scalar(
        select(Segment.id).where(Segment.environment_id == environment.id, Segment.key == key)
    )
    if exists:
        raise Conflict(message)
    segment = Segment(tenant_id=tenant_id, environment_id=environment.id, key=key, **fields)
    session.add(segment)
    await flush_unique(session, message)
    version = await bump_environment_version(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.create",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
        data={"diff": field_diff({}, fields)},
    )
    record_flags_change(session, tenant_id, environment_key, version, segments=[key])
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
    validate_segment_document({"key": key, "version": segment.version + 1, **after})
    await _check_segment_references(session, environment, key, after["rules"])
    version = await update_versioned_row(
        session, segment, after, changed_message="The segment changed since it was read."
    )
    environment_version = await bump_environment_version(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.update",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
        data={"version": version, "diff": diff},
    )
    record_flags_change(session, tenant_id, environment_key, environment_version, segments=[key])
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
    version = await bump_environment_version(session, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action="flags.segment.delete",
        actor=actor,
        target_type="flags_segment",
        target_id=f"{environment_key}/{key}",
    )
    record_flags_change(session, tenant_id, environment_key, version, segments=[key])


async def _check_segment_references(
    session: AsyncSession, environment: FlagEnvironment, key: str, rules: Sequence[Any]
) -> None:
    named = segment_references(rules)
    if key in named:
        raise ValidationFailed(f"The segment {key!r} cannot contain itself.")
    await check_segments_exist(session, environment, named)


async def check_segments_exist(
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

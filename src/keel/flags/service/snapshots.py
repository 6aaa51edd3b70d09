"""An environment's snapshot, what SDKs evaluate: every unarchived flag merged with its state
there, and every segment, under the environment's version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.flags.models import Flag, FlagState, Segment
from keel.flags.service.documents import (
    definition_document,
    merged_flag,
    segment_document,
    state_document,
)
from keel.flags.service.environments import get_environment


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

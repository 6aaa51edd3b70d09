"""What every flags write shares: the environment's version counter (bumped by each change
of what its snapshot holds), the change recorded on the ``flags`` stream in the caller's
unit of work, and a flush that turns a lost unique race into a 409."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.changes import record_change
from keel.core.db import utcnow
from keel.core.errors import Conflict
from keel.flags.models import FlagEnvironment

#: The change stream of flag changes; the subject is the environment's key.
FLAGS_STREAM = "flags"


def record_flags_change(
    session: AsyncSession,
    tenant_id: str,
    environment: str,
    version: int,
    *,
    keys: Iterable[str] = (),
    segments: Iterable[str] = (),
    **extra: Any,
) -> None:
    """Record on the ``flags`` stream, in the caller's unit of work, that ``environment``
    moved to ``version`` by a change of the flags ``keys`` and the ``segments`` named."""
    record_change(
        session,
        tenant_id,
        FLAGS_STREAM,
        environment,
        {"version": version, "keys": sorted(set(keys)), "segments": sorted(set(segments)), **extra},
    )


async def bump_environment_version(session: AsyncSession, environment: FlagEnvironment) -> int:
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


async def flush_unique(session: AsyncSession, message: str) -> None:
    """Flush; a unique constraint lost to a concurrent writer is a 409, not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(message) from None

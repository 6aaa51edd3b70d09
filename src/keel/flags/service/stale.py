"""The stale listing: flags nobody evaluated for a while, and flags fully rolled out, both
candidates for removal from code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.flags.models import Flag, FlagEvaluation, FlagState
from keel.flags.service.documents import state_document
from keel.flags.service.environments import get_environment
from keel.flags.service.rollouts import fully_rolled_out


@dataclass(frozen=True)
class StaleFlag:
    key: str
    reasons: list[str]
    last_evaluated_at: datetime | None
    serving: str | None


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

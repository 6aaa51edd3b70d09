"""SDK event batches: exposures and tracked events stored for experiment results (the
context key only as a keyed hash), evaluation summaries moving the flags' last evaluation
times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import ValidationFailed
from keel.flags.models import ExperimentEvent, Flag
from keel.flags.service.environments import get_environment
from keel.flags.service.evaluation import record_evaluations

#: How far in the past and the future an SDK event's time may be.
MAX_EVENT_AGE = timedelta(days=7)
MAX_EVENT_SKEW = timedelta(minutes=5)


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

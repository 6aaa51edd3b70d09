"""Server-side evaluation with the SDK's own engine on a compiled snapshot (kept per
environment version), and the flags' last evaluation times the stale listing reads."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.flags.models import FlagEvaluation
from keel.flags.service.environments import environment_version
from keel.flags.service.snapshots import snapshot
from keel_client import flags as engine

#: A process writes a flag's last evaluation time at most this often.
EVALUATION_WRITE_INTERVAL_SECONDS = 60.0
#: Compiled snapshots kept for server-side evaluation (one per environment version).
COMPILED_SNAPSHOTS_KEPT = 64

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

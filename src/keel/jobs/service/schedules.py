"""Cron schedules: a job at each tick, once per tick however many replicas run the loop.

**Expressions.** Five fields (minute hour day month weekday, as crontab(5)), or six with
seconds first (``*/10 * * * * *``), or an alias (``@hourly``, ``@daily``...). They are read
on the wall clock of the schedule's IANA time zone (``Europe/Paris``); parsing and iterating
is croniter's. An expression or zone that does not parse is a
:class:`~keel.core.errors.ValidationFailed` naming it.

**Exactly once.** Every replica's loop calls :func:`fire_due_schedules` a few times a second.
It selects the due schedules ``FOR UPDATE SKIP LOCKED`` (SQLite: under the write lock, so
loops take turns), and for each, in one transaction, advances ``next_run_at`` by a
compare-and-set on its old value and enqueues the tick's job with the unique key
``cron:<name>:<tick>`` counted in every state. A second loop either skips the locked row or,
once the first commits, finds the schedule no longer due; were both ever to pass, the unique
key would still make one job.

**Late and missed ticks.** A loop that fell behind by up to :data:`CATCH_UP_SECONDS` (a
busy machine, a slow round) catches up tick by tick: the next run after a firing is the tick
after the one fired, so a per-second schedule loses no tick to a hiccup. Ticks missed for
longer (every replica was down, or the schedule was disabled) fire once, not once each: the
next run is then the first tick after *now*. A schedule that is created or changed starts at
its next tick from then. A tick's job carries the tick as its ``run_at``.

**Daylight saving time.** Ticks are wall-clock times in the zone, each fired at most once:

- a tick that does not exist (the hour skipped when clocks go forward: 02:30 on a spring
  morning in New York) fires once, at the first instant after the gap (03:00 local); several
  skipped ticks (``*/15`` in that hour) fire as one;
- a tick that happens twice (the hour repeated when clocks go back) fires once, at its first
  occurrence; a schedule that ticks every minute or second therefore pauses during the
  repeated hour. Schedules that must tick at a steady pace belong in ``UTC``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job, JobSchedule, JobState
from keel.jobs.service.enqueue import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT_SECONDS,
    enqueue,
    validate_name,
)

#: Due schedules one firing round takes at most (the next round, a moment later, the rest).
FIRE_BATCH = 100
#: How far behind a tick may be and still be caught up with rather than folded into one.
CATCH_UP_SECONDS = 60.0
#: Wall-clock ticks looked at to find the next real one (the repeated hour of a
#: per-second schedule needs 3,600).
_MAX_STEPS = 10_000
_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def _has_seconds(cron: str) -> bool:
    return len(cron.split()) == 6


def validate_cron(cron: str) -> str:
    """``cron`` with its spacing normalised, if it is five fields, six with seconds first,
    or an alias, and ticks at least once in the years to come."""
    fields = cron.split()
    if len(fields) == 1 and fields[0].lower() in _ALIASES:
        normalised = fields[0].lower()
    elif len(fields) in (5, 6):
        normalised = " ".join(fields)
    else:
        raise ValidationFailed(
            f"Cron expression {cron!r} is not five fields (minute hour day month weekday), "
            "six with seconds first, or an alias such as @daily."
        )
    from croniter import CroniterError, croniter  # with dateutil: only where schedules are

    try:
        croniter(
            normalised, datetime(2000, 1, 1), second_at_beginning=_has_seconds(normalised)
        ).get_next(datetime)
    except (CroniterError, ValueError) as error:
        raise ValidationFailed(f"Cron expression {cron!r} does not parse: {error}.") from None
    return normalised


def validate_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Paris``, ``UTC``)."""
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(
            f"Time zone {name!r} is not an IANA time zone name (such as Europe/Paris or UTC)."
        ) from None


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the gap of a forward clock change that ``wall`` falls in."""
    # In a gap, fold=1 reads the wall time with the offset after the change (an instant
    # before the change) and fold=0 with the offset before it (an instant after).
    lower = math.floor(wall.replace(tzinfo=zone, fold=1).timestamp())
    upper = math.ceil(wall.replace(tzinfo=zone, fold=0).timestamp())
    after_offset = datetime.fromtimestamp(upper, UTC).astimezone(zone).utcoffset()
    while upper - lower > 1:
        middle = (lower + upper) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(zone).utcoffset() == after_offset:
            upper = middle
        else:
            lower = middle
    return datetime.fromtimestamp(upper, UTC)


def _instant_of(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time: its first occurrence, or the end of the gap it
    falls in."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    return _gap_end(wall, zone)


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``cron`` on ``timezone``'s wall clock strictly after ``after``, in
    UTC (the daylight saving rules are in the module's text). Pure; ``cron`` and
    ``timezone`` as validated."""
    zone = validate_timezone(timezone)
    wall = after.astimezone(zone).replace(tzinfo=None)
    from croniter import croniter

    ticks = croniter(cron, wall, second_at_beginning=_has_seconds(cron))
    for _ in range(_MAX_STEPS):
        instant = _instant_of(ticks.get_next(datetime), zone)
        if instant > after:
            return instant
    raise ValidationFailed(f"Cron expression {cron!r} has no tick after {after.isoformat()}.")


@dataclass(frozen=True)
class SavedSchedule:
    schedule: JobSchedule
    created: bool


async def put_schedule(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    cron: str,
    queue: str,
    task: str,
    timezone: str = "UTC",
    args: Any = (),
    priority: int = DEFAULT_PRIORITY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    enabled: bool = True,
    now: datetime | None = None,
) -> SavedSchedule:
    """Create or replace the schedule ``name``. Its next run is its first tick after now,
    unless only its job's fields changed (then the pending tick stays)."""
    validate_name("Schedule", name)
    validate_name("Queue", queue)
    validate_name("Task", task)
    cron = validate_cron(cron)
    validate_timezone(timezone)
    if max_attempts < 1:
        raise ValidationFailed("max_attempts is at least 1.")
    if timeout_seconds < 1:
        raise ValidationFailed("timeout_seconds is at least 1.")
    now = now or utcnow()
    first = next_tick(cron, timezone, now)
    bind_tenant(session, tenant_id)
    await hold_write_lock(session)
    query = (
        select(JobSchedule)
        .where(JobSchedule.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    fields = {
        "cron": cron,
        "timezone": timezone,
        "queue": queue,
        "task": task,
        "args": list(args) if isinstance(args, tuple) else args,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds,
        "enabled": enabled,
        "updated_at": now,
    }
    schedule = await session.scalar(query)
    if schedule is None:
        schedule = JobSchedule(name=name, next_run_at=first, **fields)
        try:
            async with session.begin_nested():
                session.add(schedule)
                await session.flush()
            return SavedSchedule(schedule, created=True)
        except IntegrityError:
            # PostgreSQL: a concurrent first put of the name committed; this one replaces it.
            schedule = await session.scalar(query)
            if schedule is None:  # pragma: no cover - the constraint refused for another reason
                raise
    if schedule.cron != cron or schedule.timezone != timezone or (enabled and not schedule.enabled):
        schedule.next_run_at = first
    for column, value in fields.items():
        setattr(schedule, column, value)
    await session.flush()
    return SavedSchedule(schedule, created=False)


async def get_schedule(session: AsyncSession, tenant_id: str, name: str) -> JobSchedule:
    bind_tenant(session, tenant_id)
    schedule = await session.scalar(
        select(JobSchedule)
        .where(JobSchedule.name == name)
        .execution_options(populate_existing=True)
    )
    if schedule is None:
        raise NotFound(f"No schedule {name!r}.")
    return schedule


async def list_schedules(session: AsyncSession, tenant_id: str) -> list[JobSchedule]:
    """The tenant's schedules by name."""
    bind_tenant(session, tenant_id)
    return list(
        await session.scalars(
            select(JobSchedule).order_by(JobSchedule.name).execution_options(populate_existing=True)
        )
    )


async def delete_schedule(session: AsyncSession, tenant_id: str, name: str) -> JobSchedule:
    """Remove the schedule (jobs it enqueued stay); returns it as it was."""
    schedule = await get_schedule(session, tenant_id, name)
    await session.delete(schedule)
    await session.flush()
    return schedule


def tick_unique_key(name: str, tick: datetime) -> str:
    """The unique key of the job of one tick of schedule ``name``."""
    return f"cron:{name}:{tick.astimezone(UTC).isoformat()}"


async def fire_due_schedules(
    session: AsyncSession, *, now: datetime | None = None, batch: int = FIRE_BATCH
) -> list[Job]:
    """Enqueue the job of every due tick of every tenant's enabled schedules, and advance
    each schedule to its next tick (see "Late and missed ticks"); returns the jobs enqueued.
    Exactly once per tick across concurrent callers (see the module's text). The session is
    left bound to the last schedule's tenant: use a fresh one per round."""
    now = now or utcnow()
    await hold_write_lock(session)
    due: Sequence[JobSchedule] = list(
        await session.scalars(
            select(JobSchedule)
            .where(JobSchedule.enabled.is_(True), JobSchedule.next_run_at <= now)
            .order_by(JobSchedule.next_run_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
            .execution_options(all_tenants=True, populate_existing=True)
        )
    )
    fired = []
    for schedule in due:
        tick = schedule.next_run_at
        late = (now - tick).total_seconds() <= CATCH_UP_SECONDS
        following = next_tick(schedule.cron, schedule.timezone, tick if late else now)
        advanced = await session.execute(
            update(JobSchedule)
            .where(JobSchedule.id == schedule.id, JobSchedule.next_run_at == tick)
            .values(next_run_at=following, last_run_at=tick, updated_at=now)
            .execution_options(all_tenants=True, synchronize_session=False)
        )
        assert isinstance(advanced, CursorResult)
        if advanced.rowcount != 1:
            continue  # another loop fired this tick meanwhile
        enqueued = await enqueue(
            session,
            schedule.tenant_id,
            schedule.queue,
            schedule.task,
            schedule.args,
            priority=schedule.priority,
            max_attempts=schedule.max_attempts,
            timeout_seconds=schedule.timeout_seconds,
            tags=(f"schedule:{schedule.name}",),
            unique_key=tick_unique_key(schedule.name, tick),
            unique_states=list(JobState),
        )
        if enqueued.created:
            fired.append(enqueued.job)
    return fired

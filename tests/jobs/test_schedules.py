"""Cron schedules: parsing, time zones and daylight saving (pure), and firing exactly once
per tick with two concurrent firers over simulated time, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from keel.core.db import Database, utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job, JobState
from keel.jobs.service import (
    delete_schedule,
    fire_due_schedules,
    list_schedules,
    next_tick,
    put_schedule,
    validate_cron,
    validate_timezone,
)


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    "cron", ["61 * * * *", "* * *", "every day", "* * * * * * *", "*/0 * * * *", "@often"]
)
def test_a_cron_expression_that_does_not_parse_is_refused(cron: str) -> None:
    with pytest.raises(ValidationFailed, match="Cron expression"):
        validate_cron(cron)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "UTC+2"])
def test_a_time_zone_that_is_not_iana_is_refused(zone: str) -> None:
    with pytest.raises(ValidationFailed, match="IANA"):
        validate_timezone(zone)


def test_five_fields_six_with_seconds_first_and_aliases() -> None:
    assert validate_cron("0  2 * * *") == "0 2 * * *"
    assert validate_cron("@Daily") == "@daily"
    after = utc(2026, 5, 1, 10, 0, 7)
    assert next_tick("*/10 * * * * *", "UTC", after) == utc(2026, 5, 1, 10, 0, 10)
    assert next_tick("0 2 * * *", "UTC", after) == utc(2026, 5, 2, 2, 0)
    assert next_tick("@hourly", "UTC", after) == utc(2026, 5, 1, 11, 0)
    # 02:00 in Paris is 00:00 UTC in summer.
    assert next_tick("0 2 * * *", "Europe/Paris", after) == utc(2026, 5, 2, 0, 0)


def test_a_tick_in_the_skipped_hour_fires_once_at_the_end_of_the_gap() -> None:
    # New York, 8 March 2026: at 02:00 EST the clocks jump to 03:00 EDT (07:00 UTC).
    day_before = utc(2026, 3, 7, 12, 0)
    assert next_tick("30 2 * * *", "America/New_York", day_before) == utc(2026, 3, 8, 7, 0)
    assert next_tick("30 2 * * *", "America/New_York", utc(2026, 3, 8, 7, 0)) == utc(
        2026, 3, 9, 6, 30
    )
    # Every quarter hour: 02:00, 02:15, 02:30 and 02:45 do not exist; one tick stands for them.
    ticks, at = [], utc(2026, 3, 8, 6, 40)  # 01:40 EST
    for _ in range(4):
        at = next_tick("*/15 * * * *", "America/New_York", at)
        ticks.append(at)
    assert ticks == [
        utc(2026, 3, 8, 6, 45),  # 01:45 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT: the skipped hour's ticks, once
        utc(2026, 3, 8, 7, 15),  # 03:15 EDT
        utc(2026, 3, 8, 7, 30),
    ]


def test_a_tick_in_the_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    # New York, 1 November 2026: at 02:00 EDT the clocks go back to 01:00 EST (06:00 UTC).
    first = next_tick("30 1 * * *", "America/New_York", utc(2026, 11, 1, 0, 0))
    assert first == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert next_tick("30 1 * * *", "America/New_York", first) == utc(2026, 11, 2, 6, 30)
    # Hourly: 01:00 EDT, then 02:00 EST; 01:00 EST (the repeat) does not tick again.
    hourly = next_tick("0 * * * *", "America/New_York", utc(2026, 11, 1, 4, 30))
    assert hourly == utc(2026, 11, 1, 5, 0)
    assert next_tick("0 * * * *", "America/New_York", hourly) == utc(2026, 11, 1, 7, 0)
    # A call made during the repeated hour still finds the next tick ahead of it.
    assert next_tick("*/20 * * * *", "America/New_York", utc(2026, 11, 1, 6, 10)) == utc(
        2026, 11, 1, 7, 0
    )


async def _schedule_jobs(database: Database, tenant_id: str, name: str) -> list[Job]:
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        return list(
            await session.scalars(
                select(Job).where(Job.unique_key.like(f"cron:{name}:%")).order_by(Job.unique_key)
            )
        )


async def test_two_concurrent_firers_fire_each_tick_exactly_once(
    database: Database, tenant_id: str
) -> None:
    start = utcnow().replace(microsecond=0) + timedelta(seconds=1)
    async with database.session() as session:
        await put_schedule(
            session,
            tenant_id,
            "every-second",
            cron="* * * * * *",
            queue="cron",
            task="tick",
            args={"report": 7},
            now=start,
        )

    async def firer(now: datetime) -> int:
        async with database.session() as session:
            return len(await fire_due_schedules(session, now=now))

    fired = 0
    for step in range(1, 41):  # twenty simulated seconds, two "replicas" every half second
        now = start + timedelta(seconds=step * 0.5)
        fired += sum(await asyncio.gather(firer(now), firer(now)))
    jobs = await _schedule_jobs(database, tenant_id, "every-second")
    assert len(jobs) == fired == 20
    ticks = [start + timedelta(seconds=n) for n in range(1, 21)]
    assert [job.unique_key for job in jobs] == [f"cron:every-second:{t.isoformat()}" for t in ticks]
    assert all(job.args == {"report": 7} and job.queue == "cron" for job in jobs)
    assert all(job.state == JobState.available for job in jobs)
    async with database.session() as session:
        (schedule,) = await list_schedules(session, tenant_id)
    assert schedule.last_run_at == ticks[-1]
    assert schedule.next_run_at == ticks[-1] + timedelta(seconds=1)


async def test_missed_ticks_fire_once_and_a_disabled_schedule_not_at_all(
    database: Database, tenant_id: str
) -> None:
    start = utcnow().replace(microsecond=0)
    async with database.session() as session:
        saved = await put_schedule(
            session, tenant_id, "minutely", cron="* * * * *", queue="q", task="t", now=start
        )
        assert saved.created
        await put_schedule(
            session,
            tenant_id,
            "off",
            cron="* * * * *",
            queue="q",
            task="t",
            enabled=False,
            now=start,
        )
    later = start + timedelta(hours=3)  # every replica was down for three hours
    async with database.session() as session:
        await fire_due_schedules(session, now=later)
    async with database.session() as session:
        await fire_due_schedules(session, now=later + timedelta(seconds=1))
    assert len(await _schedule_jobs(database, tenant_id, "minutely")) == 1
    assert await _schedule_jobs(database, tenant_id, "off") == []
    async with database.session() as session:
        schedules = {s.name: s for s in await list_schedules(session, tenant_id)}
    assert schedules["minutely"].next_run_at > later


async def test_schedules_are_replaced_listed_and_deleted(
    database: Database, tenant_id: str
) -> None:
    now = utc(2026, 6, 1, 12, 0, 30)
    async with database.session() as session:
        await put_schedule(
            session, tenant_id, "nightly", cron="0 2 * * *", queue="q", task="t", now=now
        )
        replaced = await put_schedule(
            session,
            tenant_id,
            "nightly",
            cron="0 3 * * *",
            timezone="Europe/Paris",
            queue="q",
            task="t2",
            priority=3,
            now=now,
        )
    assert not replaced.created
    assert replaced.schedule.next_run_at == utc(2026, 6, 2, 1, 0)  # 03:00 in Paris
    async with database.session() as session:
        (listed,) = await list_schedules(session, tenant_id)
        assert (listed.task, listed.priority, listed.timezone) == ("t2", 3, "Europe/Paris")
        with pytest.raises(ValidationFailed, match="Cron expression"):
            await put_schedule(session, tenant_id, "bad", cron="99 * * * *", queue="q", task="t")
        with pytest.raises(ValidationFailed, match="IANA"):
            await put_schedule(
                session, tenant_id, "bad", cron="* * * * *", timezone="Nowhere", queue="q", task="t"
            )
        await delete_schedule(session, tenant_id, "nightly")
        assert await list_schedules(session, tenant_id) == []
        with pytest.raises(NotFound):
            await delete_schedule(session, tenant_id, "nightly")


async def test_a_loop_that_fell_behind_catches_up_tick_by_tick(
    database: Database, tenant_id: str
) -> None:
    """A round 2.5 s late (a busy machine) loses no tick of a per-second schedule: the ticks
    it missed fire in the next rounds, each once."""
    start = utcnow().replace(microsecond=0) + timedelta(seconds=1)
    async with database.session() as session:
        await put_schedule(
            session, tenant_id, "s", cron="* * * * * *", queue="q", task="t", now=start
        )
    late = start + timedelta(seconds=3.5)  # ticks +1, +2 and +3 are due
    for _ in range(4):
        async with database.session() as session:
            await fire_due_schedules(session, now=late)
    jobs = await _schedule_jobs(database, tenant_id, "s")
    ticks = [start + timedelta(seconds=n) for n in (1, 2, 3)]
    assert [job.unique_key for job in jobs] == [f"cron:s:{t.isoformat()}" for t in ticks]

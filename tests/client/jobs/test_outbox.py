"""Transactional enqueue: a job written through ``Outbox`` in a service's own transaction
exists in Keel if and only if that transaction committed; the relay sends rows in order,
once each, and deletes them. The service's database is SQLite or PostgreSQL (a fresh one),
like Keel's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keel_client.jobs import JobsClient, Outbox, OutboxJob, OutboxRelay, RejectedJob
from keel_client.jobs._spool import JOBS_PATH, SpooledRequest
from tests.support.databases import create_postgres_database, drop_postgres_database

service_metadata = MetaData()
orders = Table("orders", service_metadata, Column("id", Integer, primary_key=True),
               Column("status", String(20)))  # fmt: skip


@pytest.fixture
async def service_engine(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    """The service's own database, of the same kind as Keel's (a fresh PostgreSQL one)."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'service.db'}")
        yield engine
        await engine.dispose()
        return
    admin_url = str(request.getfixturevalue("postgres_admin_url"))  # computed already
    name = f"service_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(await create_postgres_database(admin_url, name))
    yield engine
    await engine.dispose()
    await drop_postgres_database(admin_url, name)


@pytest.fixture
async def sessions(service_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    async with service_engine.begin() as connection:
        await connection.run_sync(service_metadata.create_all)
    await Outbox.create_table(service_engine)
    return async_sessionmaker(service_engine, expire_on_commit=False)


async def jobs_of(jobs: JobsClient, queue: str) -> list[object]:
    return [job.args for job in (await jobs.list_jobs(queue, limit=500)).jobs]


async def outbox_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.execute(select(func.count()).select_from(OutboxJob))
        return int(count.scalar_one())


async def test_a_committed_transactions_job_reaches_keel_and_a_rolled_back_ones_never_does(
    jobs: JobsClient, sessions: async_sessionmaker[AsyncSession], service_engine: AsyncEngine,
    queue: str,
) -> None:  # fmt: skip
    outbox = Outbox()
    async with sessions() as session, session.begin():
        await session.execute(insert(orders).values(id=1, status="paid"))
        outbox.enqueue(session, "send_receipt", 1, queue=queue)
    async with sessions() as session:
        transaction = await session.begin()
        await session.execute(insert(orders).values(id=2, status="paid"))
        outbox.enqueue(session, "send_receipt", 2, queue=queue)
        await transaction.rollback()  # the order failed
    assert await outbox_rows(service_engine) == 1
    relay = outbox.relay(service_engine, jobs, interval=10.0)  # woken by commits, not polls
    async with relay:
        await eventually_relayed(jobs, queue, 1)
        async with sessions() as session, session.begin():
            outbox.enqueue(session, "send_receipt", 3, queue=queue)
        assert await eventually_relayed(jobs, queue, 2)
    assert await jobs_of(jobs, queue) == [[1], [3]]
    assert await outbox_rows(service_engine) == 0
    assert relay.sent == 2


async def eventually_relayed(jobs: JobsClient, queue: str, count: int) -> bool:
    deadline = time.monotonic() + 30.0
    while len(await jobs_of(jobs, queue)) < count:
        assert time.monotonic() < deadline, "the relay did not send the row"
        await asyncio.sleep(0.05)
    return True


async def test_rows_go_in_order_once_even_when_sent_again(
    jobs: JobsClient, sessions: async_sessionmaker[AsyncSession], service_engine: AsyncEngine,
    queue: str,
) -> None:  # fmt: skip
    """A relay that crashed after Keel answered but before the delete sends the rows again:
    their idempotency keys make them the same jobs."""
    outbox = Outbox()
    async with sessions() as session, session.begin():
        for n in range(30):
            outbox.enqueue(session, "step", n, queue=queue)
    async with service_engine.connect() as connection:
        rows = (await connection.execute(select(OutboxJob.idempotency_key, OutboxJob.body))).all()
    for key, body in rows[:10]:  # the "crashed" relay's sends
        await jobs._send(SpooledRequest(JOBS_PATH, body, key))
    relay = OutboxRelay(service_engine, jobs, batch_size=7)
    assert await relay.relay_once() == 30
    assert await jobs_of(jobs, queue) == [[n] for n in range(30)]
    assert await outbox_rows(service_engine) == 0


async def test_a_row_keel_refuses_is_dropped_and_reported_not_blocking_the_rest(
    jobs: JobsClient, sessions: async_sessionmaker[AsyncSession], service_engine: AsyncEngine,
    queue: str,
) -> None:  # fmt: skip
    outbox = Outbox()
    async with sessions() as session, session.begin():
        outbox.enqueue(session, "not a task name!", queue=queue)
        outbox.enqueue(session, "step", 1, queue=queue)
    refused: list[RejectedJob] = []
    relay = OutboxRelay(service_engine, jobs, on_rejected=refused.append)
    assert await relay.relay_once() == 2
    assert [rejected.status for rejected in refused] == [422]
    assert await jobs_of(jobs, queue) == [[1]]

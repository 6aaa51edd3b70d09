"""The embedded default's SQLite connections: one hand-over to the worker thread a statement,
long results read in chunks, errors and transactions as with plain aiosqlite."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from keel.core import sqlite
from keel.core.db import Database
from keel.settings import DatabasePoolSettings, Settings


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.from_settings(Settings(data_dir=tmp_path, _env_file=None))
    async with database.session() as session:
        await session.execute(text("CREATE TABLE n (i INTEGER PRIMARY KEY, label TEXT NOT NULL)"))
    yield database
    await database.engine.dispose()


async def fill(db: Database, count: int) -> None:
    if not count:
        return
    async with db.session() as session:
        await session.execute(
            text("INSERT INTO n (i, label) VALUES (:i, :label)"),
            [{"i": i, "label": f"row {i}"} for i in range(count)],
        )


async def test_connections_are_one_hop_connections(db: Database) -> None:
    async with db.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.driver_connection, sqlite.OneHopConnection)


def count_hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions run on the connection's thread from now on, one a
    hand-over (``OneHopConnection.run`` still runs them)."""
    calls: list[str] = []
    run = sqlite.OneHopConnection.run

    async def counting_run(
        self: sqlite.OneHopConnection, function: object, *args: object
    ) -> object:
        calls.append(getattr(function, "__name__", "?"))
        return await run(self, function, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite.OneHopConnection, "run", counting_run)
    return calls


async def test_a_query_is_one_call_on_the_worker_thread(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(db, 3)
    calls = count_hand_overs(monkeypatch)
    async with db.session() as session:
        rows = (await session.execute(text("SELECT i, label FROM n ORDER BY i"))).all()
    assert [tuple(row) for row in rows] == [(0, "row 0"), (1, "row 1"), (2, "row 2")]
    assert calls == ["_execute"]


@pytest.mark.parametrize("count", [0, 1, sqlite.FIRST_FETCH, sqlite.FIRST_FETCH + 1, 2_000])
async def test_results_of_every_length_come_back_whole_and_in_order(
    db: Database, count: int
) -> None:
    await fill(db, count)
    async with db.session() as session:
        everything = (await session.execute(text("SELECT i FROM n ORDER BY i"))).scalars().all()
        streamed = [
            i
            async for i in (
                await session.stream(
                    text("SELECT i FROM n ORDER BY i").execution_options(yield_per=100)
                )
            ).scalars()
        ]
        first = (await session.execute(text("SELECT i FROM n ORDER BY i"))).first()
    assert everything == list(range(count))
    assert streamed == list(range(count))
    assert first == ((0,) if count else None)


async def test_a_long_result_abandoned_midway_leaves_the_connection_usable(db: Database) -> None:
    await fill(db, 3 * sqlite.FIRST_FETCH)
    async with db.session() as session:
        result = await session.stream(text("SELECT i FROM n ORDER BY i"))
        partial = await result.fetchmany(10)
        await result.close()
        assert [row[0] for row in partial] == list(range(10))
        count = await session.scalar(text("SELECT count(*) FROM n"))
    assert count == 3 * sqlite.FIRST_FETCH


async def test_errors_and_rollback_behave_as_with_aiosqlite(db: Database) -> None:
    await fill(db, 1)

    async def write_then_collide() -> None:
        async with db.session() as session:
            await session.execute(text("INSERT INTO n (i, label) VALUES (5, 'kept?')"))
            await session.execute(text("INSERT INTO n (i, label) VALUES (0, 'duplicate')"))

    with pytest.raises(IntegrityError):
        await write_then_collide()
    async with db.session() as session:
        labels = (await session.execute(text("SELECT label FROM n ORDER BY i"))).scalars().all()
    assert labels == ["row 0"]  # the whole unit of work was rolled back


async def test_row_counts_of_writes(db: Database) -> None:
    await fill(db, 10)
    async with db.session() as session:
        updated = await session.execute(text("UPDATE n SET label = 'x' WHERE i < 4"))
    assert getattr(updated, "rowcount", None) == 4


async def test_a_held_write_lock_keeps_what_was_read_current_until_commit(
    db: Database, tmp_path: Path
) -> None:
    """SQLite has no ``SELECT … FOR UPDATE``: ``hold_write_lock`` takes the write lock before
    the read. Read-then-write units of work at once, in this process and in another engine
    (another process), each see the others' writes; without it each read the same value in
    autocommit and all but one update was lost."""
    table = table_of_n()
    await fill(db, 1)
    elsewhere = Database.from_settings(Settings(data_dir=tmp_path, _env_file=None))

    async def add_one(database: Database) -> None:
        async with database.session() as session:
            await sqlite.hold_write_lock(session)
            read = select(table.c.label).where(table.c.i == 0).with_for_update()
            label = (await session.execute(read)).scalar_one()
            count = int(label.removeprefix("row ")) + 1
            await asyncio.sleep(0.01)  # others read meanwhile, were the lock not held
            await session.execute(update(table).where(table.c.i == 0).values(label=f"row {count}"))

    try:
        await asyncio.gather(*(add_one(db if n % 2 else elsewhere) for n in range(8)))
    finally:
        await elsewhere.engine.dispose()
    async with db.session() as session:
        label = (await session.execute(select(table.c.label).where(table.c.i == 0))).scalar()
    assert label == "row 8"
    async with db.session() as session:  # a read, even FOR UPDATE, takes no lock by itself
        await session.execute(select(table.c.label).with_for_update())
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert not driver.writing


def table_of_n() -> Table:
    return Table("n", MetaData(), Column("i", Integer, primary_key=True), Column("label", Text))


def _add_one_here(connection: sqlite3.Connection, fail: bool) -> int:
    """On the connection's thread: read, then write one more (or fail after the write)."""
    [(label,)] = connection.execute("SELECT label FROM n WHERE i = 0").fetchall()
    count = int(label.removeprefix("row ")) + 1
    connection.execute("UPDATE n SET label = ? WHERE i = 0", (f"row {count}",))
    if fail:
        raise ValueError("after the write")
    return count


async def test_a_unit_of_work_run_whole_on_the_thread_takes_turns_and_commits_or_rolls_back(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_in_transaction``: one hand-over, under the write lock (so it takes turns with
    units of work that hold it through SQLAlchemy), committed when the function returns,
    rolled back when it raises, the writer's turn given back either way."""
    await fill(db, 1)
    calls = count_hand_overs(monkeypatch)

    async def add_one_at_once(fail: bool = False) -> None:
        async with db.engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert isinstance(driver, sqlite.OneHopConnection)
            await driver.run_in_transaction(_add_one_here, fail)
            assert not driver.writing

    async def add_one_through_sqlalchemy() -> None:
        table = table_of_n()
        async with db.session() as session:
            await sqlite.hold_write_lock(session)
            label = (await session.execute(select(table.c.label))).scalar_one()
            await asyncio.sleep(0.01)  # a run_in_transaction meanwhile would be lost
            count = int(label.removeprefix("row ")) + 1
            await session.execute(update(table).values(label=f"row {count}"))

    await add_one_at_once()
    assert calls == ["_in_transaction"]
    await asyncio.gather(
        *(add_one_at_once() if n % 2 else add_one_through_sqlalchemy() for n in range(8))
    )
    with pytest.raises(ValueError, match="after the write"):
        await add_one_at_once(fail=True)
    async with db.session() as session:
        label = (await session.execute(text("SELECT label FROM n WHERE i = 0"))).scalar()
    assert label == "row 9"  # 1 + 8, the failed one rolled back


async def test_a_unit_of_work_run_whole_waits_out_another_process_then_fails_as_sqlalchemy_would(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock past the busy timeout: ``run_in_transaction``
    raises SQLAlchemy's ``OperationalError`` around SQLite's "database is locked" (which the
    API answers 503), not the bare driver error (a 500), and the writer's turn is given back."""
    pool = DatabasePoolSettings(sqlite_busy_timeout_seconds=0.2)
    database = Database.from_settings(
        Settings(data_dir=tmp_path, database_pool=pool, _env_file=None)
    )
    try:
        async with database.session() as session:
            await session.execute(text("CREATE TABLE n (i INTEGER PRIMARY KEY)"))
        other = sqlite3.connect(tmp_path / "keel.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with database.engine.connect() as connection:
                driver = (await connection.get_raw_connection()).driver_connection
                assert isinstance(driver, sqlite.OneHopConnection)
                with pytest.raises(OperationalError, match="database is locked"):
                    await driver.run_in_transaction(
                        lambda raw: raw.execute("INSERT INTO n (i) VALUES (1)")
                    )
        finally:
            other.rollback()
            other.close()
        async with database.engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert isinstance(driver, sqlite.OneHopConnection)
            await driver.run_in_transaction(lambda raw: raw.execute("INSERT INTO n (i) VALUES (2)"))
        async with database.session() as session:
            assert list(await session.scalars(text("SELECT i FROM n"))) == [2]
    finally:
        await database.engine.dispose()

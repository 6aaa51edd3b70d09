"""Many rows into one table at the driver's speed: a notification batch's 100,000 messages.

``session.execute(insert(table), rows)`` runs every value of every row through SQLAlchemy's
parameter machinery: for 100,000 rows of 17 columns that was over a second of a batch's
five. :func:`insert_many` does what that machinery does, once: it compiles the statement
once, takes each column's bind processor from its type on this dialect (the same processors
SQLAlchemy applies: a timestamp as SQLite's text, JSON serialised), applies the processors of
the values that are the same for every row once, and hands the driver plain tuples:
``executemany`` on SQLite (a loop in C), ``COPY`` on PostgreSQL.

Rows are complete: every column of the statement has a value in each (no defaults are
filled in), as ``same`` holds those shared by all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

#: Rows of one ``executemany`` on SQLite, or one ``COPY`` on PostgreSQL.
CHUNK = 10_000

Processor = Callable[[Any], Any] | None


@functools.lru_cache(maxsize=64)  # a few tables, a dialect or two a process
def bind_processors(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[Processor, ...]:
    """For each of ``columns``, SQLAlchemy's own bind processor for its type on ``dialect``
    (a timestamp as SQLite's text, JSON serialised; ``None`` where the driver takes the
    value as it is): what SQLAlchemy applies to a bound value, worked out once."""
    return tuple(
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    )


@functools.lru_cache(maxsize=64)  # a few tables, a dialect or two a process
def result_processors(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[Processor, ...]:
    """For each of ``columns``, SQLAlchemy's own result processor for its type on ``dialect``
    (SQLite's text back to an aware timestamp, JSON parsed; ``None`` where the driver's value
    is the value): what SQLAlchemy applies to a value read, for rows read by the driver."""
    return tuple(
        table.c[name].type.dialect_impl(dialect).result_processor(dialect, None) for name in columns
    )


@functools.lru_cache(maxsize=32)  # a few tables, a dialect or two a process
def _plan(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[int, ...], tuple[Processor, ...]]:
    """The ``INSERT`` of ``columns`` compiled for ``dialect``, where each of its positional
    parameters comes from in ``columns``, and each column's bind processor."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    order = compiled.positiontup or list(columns)
    defaulted = set(order) - set(columns)
    if defaulted:  # SQLAlchemy would fill these in from their Python defaults; this does not
        raise ValueError(f"rows of {table.name} lack columns with defaults: {sorted(defaulted)}")
    positions = tuple(columns.index(name) for name in order)
    return compiled.string, positions, bind_processors(table, columns, dialect)


async def insert_many(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    same: Mapping[str, Any] | None = None,
) -> None:
    """Insert ``rows`` (each with the same keys, columns of ``table``), with ``same`` (values
    every row shares) added to each, in the session's transaction."""
    if not rows:
        return
    connection = await session.connection()
    dialect = connection.dialect
    shared = dict(same or {})
    varying = tuple(name for name in rows[0] if name not in shared)
    columns = varying + tuple(shared)
    sql, positions, processors = _plan(table, columns, dialect)
    fixed = tuple(
        process(value) if process is not None else value
        for process, value in zip(processors[len(varying) :], shared.values(), strict=True)
    )
    steps = list(zip(varying, processors[: len(varying)], strict=True))

    def record(row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = [
            process(row[name]) if process is not None else row[name] for name, process in steps
        ]
        return (*values, *fixed)

    postgresql = dialect.name == "postgresql"
    if postgresql:  # the session's transaction begun (asyncpg's adapter begins it lazily)
        await connection.exec_driver_sql("SELECT 1")
    pick = itemgetter(*positions) if len(positions) > 1 else (lambda values: (values[0],))
    for start in range(0, len(rows), CHUNK):
        records = [record(row) for row in rows[start : start + CHUNK]]
        if postgresql:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.copy_records_to_table(table.name, columns=columns, records=records)
        else:
            await connection.exec_driver_sql(sql, [pick(values) for values in records])

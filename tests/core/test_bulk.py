"""``keel.core.bulk.insert_many``: rows written through the driver read back exactly as the
same rows written by SQLAlchemy's own ``insert``, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, Column, Integer, MetaData, String, Table, insert, select

from keel.core.bulk import insert_many
from keel.core.db import Database, UTCDateTime
from keel.core.ids import new_id


def _table() -> Table:
    return Table(
        f"bulk_{uuid.uuid4().hex[:10]}",
        MetaData(),
        Column("id", String(36), primary_key=True),
        Column("batch", String(36)),
        Column("data", JSON, nullable=True),
        Column("tags", JSON),
        Column("at", UTCDateTime),
        Column("flag", Boolean),
        Column("count", Integer, nullable=True),
    )


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id(),
            "data": {"name": f"Reader {index}", "é": "ü", "n": index, "nested": [1, None]}
            if index % 3
            else None,
            "count": index if index % 2 else None,
        }
        for index in range(count)
    ]


def _comparable(row: Any) -> tuple[Any, ...]:
    return (row.data, row.tags, row.at, row.flag, row.count)


async def test_rows_read_back_as_sqlalchemys_own_insert_writes_them(database: Database) -> None:
    table = _table()
    at = datetime(2026, 12, 7, 3, 4, 5, 678901, tzinfo=UTC) + timedelta(hours=1)
    shared = {"tags": ["news", "ünï"], "at": at, "flag": True}
    ours, theirs = _rows(25_000), _rows(25_000)  # past one chunk of the driver's
    async with database.engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    try:
        async with database.session() as session:
            await insert_many(session, table, ours, same={"batch": "ours", **shared})
            await session.execute(
                insert(table), [{**row, "batch": "theirs", **shared} for row in theirs]
            )
        async with database.session() as session:
            read = {
                batch: [
                    _comparable(row)
                    for row in await session.execute(
                        select(table)
                        .where(table.c.batch == batch)
                        .order_by(table.c.count, table.c.id)
                    )
                ]
                for batch in ("ours", "theirs")
            }
            ids = set(await session.scalars(select(table.c.id).where(table.c.batch == "ours")))
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(table.metadata.drop_all)
    assert ids == {row["id"] for row in ours}
    assert len(read["ours"]) == 25_000
    assert sorted(read["ours"], key=repr) == sorted(read["theirs"], key=repr)
    assert read["ours"][0][1:4] == (["news", "ünï"], at, True)


async def test_a_column_left_to_its_python_default_is_refused(database: Database) -> None:
    table = _table()
    table.append_column(Column("status", String(16), default="queued"))
    async with database.session() as session:
        with pytest.raises(ValueError, match="status"):
            await insert_many(session, table, [{"id": new_id()}])

"""Keyset pagination over a real table on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Integer, MetaData, String, select
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column

from keel.core.db import Database, UTCDateTime
from keel.core.errors import ValidationFailed
from keel.core.http import MAX_PAGE_SIZE, PageRequest, decode_cursor, encode_cursor, paginate
from tests.support.tables import created_tables, unique_name

ROWS = 23


class ScratchBase(DeclarativeBase):
    metadata = MetaData()


class Item(ScratchBase):
    __tablename__ = unique_name("test_item")

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


BY_RANK = (Item.rank, Item.id)
BY_CREATED = (Item.created_at, Item.id)


def rank_cursor(item: Item) -> list[Any]:
    return [item.rank, item.id]


def created_cursor(item: Item) -> list[Any]:
    return [item.created_at.isoformat(), item.id]


@pytest.fixture
async def items(database: Database) -> AsyncIterator[list[Item]]:
    """ROWS items, inserted in random order, with ties in rank and in created_at."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        Item(
            id=str(uuid.UUID(int=random.getrandbits(128))),
            rank=n // 4,  # four rows share each rank
            created_at=start + timedelta(seconds=n // 3),  # three rows share each instant
        )
        for n in range(ROWS)
    ]
    random.shuffle(rows)
    async with created_tables(database, ScratchBase.metadata):
        async with database.session() as session:
            session.add_all(rows)
        yield rows


async def walk(
    database: Database,
    order_by: Sequence[InstrumentedAttribute[Any]],
    cursor_of: Any,
    limit: int,
) -> tuple[list[str], int]:
    """Follow next_cursor from the first page to the last; the ids seen and the page count."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        async with database.session() as session:
            rows, cursor = await paginate(
                session,
                select(Item),
                PageRequest(cursor=cursor, limit=limit),
                order_by=order_by,
                cursor_of=cursor_of,
            )
        pages += 1
        assert len(rows) <= limit
        seen += [row.id for row in rows]
        if cursor is None:
            return seen, pages
        assert pages <= ROWS, "pagination does not terminate"


@pytest.mark.parametrize("limit", [1, 4, 5, ROWS, MAX_PAGE_SIZE])
async def test_pages_walk_every_row_once_in_order_despite_ties(
    items: list[Item], database: Database, limit: int
) -> None:
    expected = [item.id for item in sorted(items, key=lambda item: (item.rank, item.id))]
    seen, pages = await walk(database, BY_RANK, rank_cursor, limit)
    assert seen == expected
    assert pages == -(-ROWS // limit)  # no empty page after a full last one


async def test_pages_walk_every_row_once_ordered_by_a_timestamp_with_ties(
    items: list[Item], database: Database
) -> None:
    expected = [item.id for item in sorted(items, key=lambda item: (item.created_at, item.id))]
    seen, _ = await walk(database, BY_CREATED, created_cursor, 4)
    assert seen == expected


async def test_filters_of_the_statement_apply_on_every_page(
    items: list[Item], database: Database
) -> None:
    expected = sorted((item.rank, item.id) for item in items if item.rank % 2 == 0)
    seen: list[tuple[int, str]] = []
    cursor: str | None = None
    while True:
        async with database.session() as session:
            rows, cursor = await paginate(
                session,
                select(Item).where(Item.rank % 2 == 0),
                PageRequest(cursor, 3),
                order_by=BY_RANK,
                cursor_of=rank_cursor,
            )
        seen += [(row.rank, row.id) for row in rows]
        if cursor is None:
            break
    assert seen == expected


async def test_empty_table_gives_an_empty_last_page(database: Database) -> None:
    async with created_tables(database, ScratchBase.metadata), database.session() as session:
        rows, cursor = await paginate(
            session, select(Item), PageRequest(), order_by=BY_RANK, cursor_of=rank_cursor
        )
    assert (rows, cursor) == ([], None)


def forged(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["%%%not-base64%%%", "bm90IGpzb24", forged({"rank": 1}), forged([1])],
    ids=["not-base64", "not-json", "not-a-list", "too-short"],
)
async def test_cursor_this_api_did_not_issue_is_refused(
    items: list[Item], database: Database, cursor: str
) -> None:
    async with database.session() as session:
        with pytest.raises(ValidationFailed):
            await paginate(
                session,
                select(Item),
                PageRequest(cursor, 4),
                order_by=BY_RANK,
                cursor_of=rank_cursor,
            )


async def test_reused_cursor_from_a_query_of_other_width_is_refused(
    items: list[Item], database: Database
) -> None:
    async with database.session() as session:
        _, cursor = await paginate(
            session,
            select(Item),
            PageRequest(limit=4),
            order_by=(Item.id,),
            cursor_of=lambda item: [item.id],
        )
        assert cursor is not None
        with pytest.raises(ValidationFailed):
            await paginate(
                session,
                select(Item),
                PageRequest(cursor, 4),
                order_by=BY_RANK,
                cursor_of=rank_cursor,
            )


@pytest.mark.parametrize(
    ("order_by", "values"),
    [(BY_RANK, ["one", "x"]), (BY_RANK, [[1], "x"]), (BY_CREATED, ["yesterday", "x"])],
    ids=["text-for-integer", "list-for-integer", "text-for-timestamp"],
)
async def test_cursor_with_values_of_the_wrong_type_is_refused(
    items: list[Item],
    database: Database,
    order_by: Sequence[InstrumentedAttribute[Any]],
    values: list[Any],
) -> None:
    async with database.session() as session:
        with pytest.raises(ValidationFailed):
            await paginate(
                session,
                select(Item),
                PageRequest(forged(values), 4),
                order_by=order_by,
                cursor_of=rank_cursor,
            )


def test_cursor_round_trips_its_values() -> None:
    values = [3, "0190b6c2-7f1e-7a00-8000-000000000000", "2026-01-01T00:00:00+00:00"]
    cursor = encode_cursor(values)
    assert "=" not in cursor
    assert decode_cursor(cursor, 3) == values


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
def test_limit_outside_bounds_is_refused(limit: int) -> None:
    with pytest.raises(ValidationFailed):
        PageRequest(limit=limit)


@pytest.mark.parametrize("limit", [1, MAX_PAGE_SIZE])
def test_limit_at_the_bounds_is_accepted(limit: int) -> None:
    assert PageRequest(limit=limit).limit == limit

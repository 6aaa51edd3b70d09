"""The tree's rows in the database: reading its size and nodes, holding a tenant's log, and
inserting an append's rows the fastest way each database allows.

An append inserts a few rows into three or four tables. Through SQLAlchemy that is a round
trip per table (and on SQLite a hand-over to its thread per statement); here, on PostgreSQL,
one statement carries them all (:func:`insert_together`), a large batch goes by ``COPY``
(:func:`insert_rows`), and on SQLite the whole append is one call on the connection's thread
(:func:`store_if_size`). Names and types come from the tables' metadata and every value is
bound: nothing of a caller's becomes SQL text.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Integer,
    Table,
    column,
    insert,
    literal,
    null,
    select,
    text,
    tuple_,
    union_all,
    values,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from keel.audit.models import AuditEvent, AuditNode
from keel.audit.service.tree import Node
from keel.core.bulk import bind_processors
from keel.core.db import Base
from keel.core.tenancy import bind_tenant

#: From this many rows, PostgreSQL gets them by ``COPY`` rather than ``INSERT``.
COPY_FROM_ROWS = 64
#: Nodes looked up by one query (two bound parameters each).
_NODES_PER_QUERY = 2_000
#: PostgreSQL's codes for a transaction that lost to another, which a retry may win:
#: ``deadlock_detected`` and ``serialization_failure``.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


class LogCorrupted(RuntimeError):
    """The stored tree lacks what its own structure says it has: run ``keel audit verify``."""


# -- reading the tree ----------------------------------------------------------------------------


async def tree_size(session: AsyncSession, tenant_id: str) -> int:
    """How many leaves the tenant's tree has."""
    bind_tenant(session, tenant_id)
    # ORDER BY ... LIMIT 1 rather than max(): an index seek on both databases.
    last = await session.scalar(
        select(AuditEvent.leaf_index).order_by(AuditEvent.leaf_index.desc()).limit(1)
    )
    return 0 if last is None else int(last) + 1


async def fetch_nodes(session: AsyncSession, wanted: Iterable[Node]) -> dict[Node, bytes]:
    """Stored hashes of perfect subtrees: leaves (level 0) from the events, others from the
    nodes table; two indexed queries whatever the count."""
    wanted = set(wanted)
    leaves = [index for level, index in wanted if level == 0]
    inner = [(level, index) for level, index in wanted if level > 0]
    found: dict[Node, bytes] = {}
    if leaves:
        rows = await session.execute(
            select(AuditEvent.leaf_index, AuditEvent.leaf_hash).where(
                AuditEvent.leaf_index.in_(leaves)
            )
        )
        found.update({(0, row.leaf_index): row.leaf_hash for row in rows})
    sqlite = session.get_bind().dialect.name == "sqlite"
    for first in range(0, len(inner), _NODES_PER_QUERY):
        rows = await session.execute(
            _nodes_query(inner[first : first + _NODES_PER_QUERY], sqlite=sqlite)
        )
        found.update({(row.level, row.position): row.hash for row in rows})
    missing = wanted - found.keys()
    if missing:
        raise LogCorrupted(f"the log lacks tree nodes {sorted(missing)[:5]}")
    return found


async def size_and_nodes(
    session: AsyncSession, tenant_id: str, wanted: Iterable[Node]
) -> tuple[int, dict[Node, bytes]]:
    """The tenant's tree size and the stored hashes among ``wanted`` (those the tree lacks are
    left out: the caller knows which size it asked for), in one statement: an inclusion
    proof's three reads were three round trips, its p99 7.8 ms at a million events.

    A Core statement on the session's connection, each part naming the tenant: the ORM's
    tenant criteria do not reach a ``UNION`` of its parts."""
    bind_tenant(session, tenant_id)
    wanted = set(wanted)
    leaves = [index for level, index in wanted if level == 0]
    inner = [(level, index) for level, index in wanted if level > 0]
    if len(inner) > _NODES_PER_QUERY:  # a consistency proof of a huge tree: the long way
        return await tree_size(session, tenant_id), await fetch_nodes(session, wanted)
    last = (
        select(AuditEvent.leaf_index)
        .where(AuditEvent.tenant_id == tenant_id)
        .order_by(AuditEvent.leaf_index.desc())
        .limit(1)
        .scalar_subquery()
    )
    parts: list[Any] = [
        select(literal(-1).label("level"), last.label("position"), null().label("hash"))
    ]
    if leaves:
        parts.append(
            select(literal(0), AuditEvent.leaf_index, AuditEvent.leaf_hash).where(
                AuditEvent.tenant_id == tenant_id, AuditEvent.leaf_index.in_(leaves)
            )
        )
    connection = await session.connection()
    if inner:
        sqlite = connection.dialect.name == "sqlite"
        parts.append(_nodes_query(inner, sqlite=sqlite).where(AuditNode.tenant_id == tenant_id))
    size = 0
    found: dict[Node, bytes] = {}
    for level, position, hashed in await connection.execute(union_all(*parts)):
        if level == -1:
            size = 0 if position is None else int(position) + 1
        else:
            found[(int(level), int(position))] = hashed
    return size, found


def _nodes_query(wanted: Sequence[Node], *, sqlite: bool) -> Any:
    """The stored nodes among ``wanted``, an index seek each.

    Each database needs its own form: SQLite answers a row-value ``(level, index) IN (…)`` by
    scanning every node of the tenant, so it joins a ``VALUES`` list; PostgreSQL plans that
    join as a scan at a million events (11 ms a proof) and the ``IN`` list as index lookups
    (4.5 ms).
    """
    columns = select(AuditNode.level, AuditNode.index.label("position"), AuditNode.hash)
    if not sqlite:
        return columns.where(tuple_(AuditNode.level, AuditNode.index).in_(wanted))
    nodes = (
        values(column("level", Integer), column("position", Integer), name="wanted")
        .data(list(wanted))
        .cte()
    )
    return columns.join(
        nodes, (AuditNode.level == nodes.c.level) & (AuditNode.index == nodes.c.position)
    )


# -- holding a tenant's log ----------------------------------------------------------------------


def tenant_lock_key(tenant_id: str) -> int:
    """The tenant's log's advisory lock on PostgreSQL: held exclusively by whatever reads the
    tree to add to it (the sequencer, the general append, a head signed for the tree as it
    is), shared by appends on a remembered frontier."""
    digest = hashlib.sha256(b"keel-audit:" + tenant_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_tenant_log(session: AsyncSession, tenant_id: str) -> None:
    """One sequencer per tenant at a time across processes: an advisory lock on PostgreSQL,
    the database's write lock on SQLite."""
    bind_tenant(session, tenant_id)
    if session.get_bind().dialect.name == "sqlite":
        # A write before any read, as BEGIN IMMEDIATE: the transaction holds SQLite's write
        # lock before it reads the tree size. Begun as a read, it would find the lock taken
        # by another process's append, and its snapshot stale once free.
        await session.execute(text("DELETE FROM audit_outbox WHERE 0"))
    elif session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": tenant_lock_key(tenant_id)}
        )


def lost_a_race(error: BaseException) -> bool:
    """Whether ``error`` is what an append gets for running into another at once: an
    integrity violation (an index or event id taken), or PostgreSQL aborting it to resolve
    a deadlock or a serialization failure. Nothing of it was stored; a retry that locks and
    reads first is safe."""
    if isinstance(error, IntegrityError | sqlite3.IntegrityError):
        return True
    sqlstate = str(getattr(getattr(error, "orig", None) or error, "sqlstate", ""))
    return sqlstate.startswith("23") or sqlstate in _RETRYABLE_SQLSTATES


# -- inserting rows ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)  # a few tables, a dialect or two a process
def bound_columns(
    model: type[Base], columns: tuple[str, ...], dialect: Any
) -> tuple[Table, tuple[Callable[[Any], Any] | None, ...], tuple[str, ...]]:
    """``model``'s table, and for each of ``columns`` SQLAlchemy's own bind processor on
    ``dialect`` (timestamps as SQLite's text, for one) and its type's name there; worked out
    once per process, not per append."""
    table = Base.metadata.tables[model.__tablename__]
    type_names = tuple(table.c[name].type.compile(dialect=dialect) for name in columns)
    return table, bind_processors(table, columns, dialect), type_names


async def insert_rows(
    connection: AsyncConnection, model: type[Base], rows: list[dict[str, Any]]
) -> None:
    """Insert ``rows`` (complete, the columns of ``model``'s table, values as the driver takes
    them); a large batch on PostgreSQL by ``COPY``, which costs the database and this process
    about half what a multi-row ``INSERT`` does."""
    if not rows:
        return
    table = Base.metadata.tables[model.__tablename__]
    if connection.dialect.name != "postgresql" or len(rows) < COPY_FROM_ROWS:
        await connection.execute(insert(table), rows)
        return
    columns = list(rows[0])
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    with _integrity_errors(f"COPY {table.name}"):
        await driver.copy_records_to_table(
            table.name, columns=columns, records=list(map(itemgetter(*columns), rows))
        )


async def insert_together(
    connection: AsyncConnection,
    tables: list[tuple[type[Base], list[dict[str, Any]]]],
    *,
    shared_lock: int | None = None,
) -> None:
    """On PostgreSQL, the rows of several tables in one statement, one round trip: each
    table's ``INSERT … SELECT * FROM unnest($1::type[], …)`` a data-modifying ``WITH`` part
    of one statement (PostgreSQL runs every one of them).

    With ``shared_lock``, every part's rows are joined to taking that advisory lock shared,
    so no row of any table is written before the lock is held, in the same round trip (the
    parts run in no set order, and a volatile call in a subquery is never planned away)."""
    dialect = connection.dialect
    parts: list[str] = []
    arguments: list[Any] = []
    held = ""
    if shared_lock is not None:
        arguments.append(shared_lock)
        held = "(SELECT pg_advisory_xact_lock_shared($1::bigint)) AS held, "
    for model, rows in tables:
        if not rows:
            continue
        columns = tuple(rows[0])
        table, processors, type_names = bound_columns(model, columns, dialect)
        arrays = []
        for name, process, type_name in zip(columns, processors, type_names, strict=True):
            values = [row[name] for row in rows]
            arguments.append(values if process is None else [process(value) for value in values])
            arrays.append(f"${len(arguments)}::{type_name}[]")
        names = ", ".join(f'"{name}"' for name in columns)
        unnest = ", ".join(arrays)
        parts.append(
            f"INSERT INTO {table.name} ({names}) SELECT rows.* FROM {held}unnest({unnest}) AS rows"  # noqa: S608
        )
    if not parts:
        return
    *first, last = parts
    sql = (
        "WITH " + ", ".join(f"part{n} AS ({part})" for n, part in enumerate(first)) + " " + last
        if first
        else last
    )
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    with _integrity_errors(sql):
        await driver.execute(sql, *arguments)


@contextmanager
def _integrity_errors(statement: str) -> Iterator[None]:
    """asyncpg's integrity violations, called directly, as SQLAlchemy would have raised them:
    :meth:`AuditLog.append` retries on ``IntegrityError``."""
    try:
        yield
    except Exception as error:
        if str(getattr(error, "sqlstate", "")).startswith("23"):
            raise IntegrityError(statement, None, error) from error
        raise


# -- SQLite: an append in one call on the connection's thread ------------------------------------

Statement = tuple[str, list[dict[str, Any]]]
_SIZE_SQL = (
    "SELECT leaf_index FROM audit_events WHERE tenant_id = ? ORDER BY leaf_index DESC LIMIT 1"
)


def sqlite_insert(model: type[Base], rows: list[dict[str, Any]], dialect: Any) -> Statement:
    """``INSERT`` of ``rows`` in sqlite3's named style, values as SQLAlchemy would bind them."""
    columns = tuple(rows[0]) if rows else ()
    table, processors, _ = bound_columns(model, columns, dialect)
    bound = [
        {name: row[name] if process is None else process(row[name])
         for name, process in zip(columns, processors, strict=True)}
        for row in rows
    ]  # fmt: skip
    names = ", ".join(f'"{name}"' for name in columns)
    marks = ", ".join(f":{name}" for name in columns)
    # Names from the table's metadata, values bound: nothing of a caller's reaches the text.
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks})", bound  # noqa: S608


def store_if_size(
    connection: sqlite3.Connection, tenant_id: str, size: int, statements: list[Statement]
) -> bool:
    """On the connection's thread: take the write lock, and insert the rows if the tenant's
    tree still has ``size`` leaves; the caller's transaction commits them."""
    # A write before the read, as in lock_tenant_log: the lock is held before the size is read.
    connection.execute("DELETE FROM audit_outbox WHERE 0")
    last = connection.execute(_SIZE_SQL, (tenant_id,)).fetchone()
    if (0 if last is None else int(last[0]) + 1) != size:
        return False
    for sql, rows in statements:
        if rows:
            connection.executemany(sql, rows)
    return True

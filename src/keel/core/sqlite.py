"""SQLite connections that cross to their worker thread once per statement.

aiosqlite runs each connection on a thread of its own and hands it every call: SQLAlchemy's
adapter makes four such hand-overs for one ``SELECT`` (open a cursor, execute, fetch, close),
and each costs a thread wake-up and a GIL hand-over that dwarf the statement itself. Here
:class:`OneHopCursor` runs the whole statement — execute, fetch the first rows, close — as
one call on the worker thread, so a query is one hand-over. Results longer than
``FIRST_FETCH`` rows stay open on the thread and are fetched in chunks, so a streamed
result is never read into memory whole. A hot unit of work can go further and run whole on
the thread, its ``BEGIN`` to its ``COMMIT`` one hand-over
(:meth:`OneHopConnection.run_in_transaction`: a jobs worker's fetch round).

Writers of one process also queue for the database in the event loop (:class:`WriterQueue`)
rather than in SQLite: a connection that finds the database locked sleeps in SQLite's busy
handler, in steps of up to 100 ms, long after the writer before it has committed; under
concurrent writes that turned a 4 ms request into a 1 s one. The queue is taken at a
connection's first write and released when its transaction ends, which is exactly when
SQLite holds its write lock, and it gives up after the same busy timeout as SQLite.
Other processes (the CLI, more workers) still meet SQLite's own locking.

SQLite has no ``SELECT … FOR UPDATE``; SQLAlchemy leaves the clause out, and the read runs
in autocommit, before the transaction takes the write lock: two concurrent writers both read
the same current version. :func:`hold_write_lock` takes the lock first (``BEGIN IMMEDIATE``
after queueing as a writer), where a read must hold what it read until the transaction ends.

The connection is an :class:`aiosqlite.Connection` (its thread, queue and shutdown), created
through SQLAlchemy's ``do_connect`` hook; only its cursor and transaction ends differ. A unit of
work that only read has no transaction open (sqlite3 begins one at the first write), so its
commit, and the rollback the pool resets a returned connection with, skip the hand-over:
whether a transaction is open is read off the connection between two statements, when its
thread is idle.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

#: Rows fetched together with the statement; more are fetched in chunks of ``arraysize``.
FIRST_FETCH = 512

_Description = tuple[tuple[Any, ...], ...] | None


#: Statements that take SQLite's write lock (a transaction that writes holds it to its end).
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER"})
_FIRST_WORD = re.compile(r"\s*(\w+)")


class WriterQueue:
    """One writer at a time among the connections of an engine, queued in the event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # One per event loop (tests run several), kept with its loop: while the entry holds
        # the loop, no later loop can have its id and inherit a lock left taken in it.
        self._locks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}

    async def acquire(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(id(loop), (loop, asyncio.Lock()))[1]
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: see keel.audit.spec
                await lock.acquire()
        except TimeoutError:
            raise sqlite3.OperationalError("database is locked") from None
        return lock


def use_one_hop_connections(engine: AsyncEngine, *, busy_timeout: float) -> None:
    """Make ``engine`` (``sqlite+aiosqlite``) open :class:`OneHopConnection` connections."""
    writers = WriterQueue(busy_timeout)

    def connect(database: str, **kwargs: Any) -> OneHopConnection:
        connection = OneHopConnection(partial(sqlite3.connect, database, **kwargs), writers)
        connection._thread.daemon = True  # as SQLAlchemy sets it: never hold up exit
        return connection

    @event.listens_for(engine.sync_engine, "do_connect")
    def one_hop(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=connect, **cparams)


class OneHopConnection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection], writers: WriterQueue) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._writers = writers
        self._writing: asyncio.Lock | None = None  # held from the first write to the end

    @property
    def writing(self) -> bool:
        """Whether the current transaction has written (and holds the engine's writer turn)."""
        return self._writing is not None

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function(sqlite3_connection, *args)`` on the connection's thread."""
        return await self._execute(function, self._conn, *args)  # type: ignore[no-untyped-call]

    async def run_in_transaction(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function(sqlite3_connection, *args)`` on the connection's thread inside a
        transaction of its own that holds SQLite's write lock (``BEGIN IMMEDIATE`` … ``COMMIT``,
        rolled back if it raises), queued as a writer first: a whole unit of work in one
        hand-over, where each of its statements through SQLAlchemy would be one (and the
        ``BEGIN`` and the ``COMMIT`` one each). Only on a connection outside any transaction."""
        if self._writing is not None or self._conn.in_transaction:
            raise RuntimeError("run_in_transaction needs a connection outside any transaction")
        try:
            self._writing = await self._writers.acquire()
            try:
                return await self.run(_in_transaction, function, args)
            finally:
                self._end_writing()
        except sqlite3.Error as error:
            # Wrapped as SQLAlchemy wraps a statement's: the API answers a database still
            # locked after its busy timeout with a 503 to retry, as anywhere else.
            raise DBAPIError.instance(None, None, error, sqlite3.Error) from error

    async def before(self, sql: str) -> None:
        """Queue for the database before the first write of a transaction."""
        verb = _FIRST_WORD.match(sql)
        if self._writing is None and verb and verb.group(1).upper() in _WRITES:
            self._writing = await self._writers.acquire()

    async def begin_immediate(self) -> None:
        """Queue as a writer and begin the transaction holding SQLite's write lock, unless this
        transaction has written already (and so holds both)."""
        if self._writing is None:
            self._writing = await self._writers.acquire()
            await self.run(_begin_immediate)

    async def commit(self) -> None:
        try:
            if self._conn.in_transaction:
                await super().commit()
        finally:
            self._end_writing()

    async def rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                await super().rollback()
        finally:
            self._end_writing()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._end_writing()

    def _end_writing(self) -> None:
        if self._writing is not None:
            lock, self._writing = self._writing, None
            lock.release()


class OneHopCursor:
    """The DB-API cursor SQLAlchemy's aiosqlite adapter expects, one hand-over a statement."""

    arraysize = 256

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self._open: sqlite3.Cursor | None = None  # a long result still being read
        self._rows: list[Any] = []
        self.description: _Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> OneHopCursor:
        await self.close()
        await self._connection.before(sql)
        result = await self._connection.run(_execute, sql, parameters)
        self.description, self.rowcount, self.lastrowid, self._rows, self._open = result
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> OneHopCursor:
        await self.close()
        await self._connection.before(sql)
        result = await self._connection.run(_executemany, sql, seq_of_parameters)
        self.description, self.rowcount, self.lastrowid = result
        self._rows = []
        return self

    async def fetchone(self) -> Any:
        rows = await self.fetchmany(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        if len(self._rows) < size and self._open is not None:
            more, done = await self._connection.run(_fetch, self._open, size - len(self._rows))
            self._rows.extend(more)
            if done:
                self._open = None
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        if self._open is not None:
            rows.extend(await self._connection.run(_fetch_rest, self._open))
            self._open = None
        return rows

    async def close(self) -> None:
        self._rows = []
        if self._open is not None:
            cursor, self._open = self._open, None
            await self._connection.run(_close, cursor)


# -- run on the connection's thread --------------------------------------------------------------


def _execute(
    connection: sqlite3.Connection, sql: str, parameters: Sequence[Any] | None
) -> tuple[_Description, int, int | None, list[Any], sqlite3.Cursor | None]:
    cursor = connection.cursor()
    still_open = None
    try:
        cursor.execute(sql, parameters or ())
        rows: list[Any] = []
        if cursor.description is not None:
            rows = cursor.fetchmany(FIRST_FETCH)
            if len(rows) == FIRST_FETCH:
                still_open = cursor
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows, still_open
    finally:
        if still_open is None:
            cursor.close()


def _begin_immediate(connection: sqlite3.Connection) -> None:
    if not connection.in_transaction:
        connection.execute("BEGIN IMMEDIATE")


def _in_transaction(
    connection: sqlite3.Connection, function: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = function(connection, *args)
    except BaseException:
        connection.rollback()
        raise
    connection.commit()
    return result


def _executemany(
    connection: sqlite3.Connection, sql: str, seq_of_parameters: Any
) -> tuple[_Description, int, int | None]:
    cursor = connection.cursor()
    try:
        cursor.executemany(sql, seq_of_parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _fetch(
    connection: sqlite3.Connection, cursor: sqlite3.Cursor, size: int
) -> tuple[list[Any], bool]:
    rows = cursor.fetchmany(size)
    done = len(rows) < size
    if done:
        cursor.close()
    return rows, done


def _fetch_rest(connection: sqlite3.Connection, cursor: sqlite3.Cursor) -> list[Any]:
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _close(connection: sqlite3.Connection, cursor: sqlite3.Cursor) -> None:
    cursor.close()


async def hold_write_lock(session: AsyncSession) -> None:
    """On SQLite, take the database's write lock now, until the transaction ends: what a
    ``SELECT … FOR UPDATE`` after this reads stays as read (SQLite has no row locks, and its
    SQL no ``FOR UPDATE``). Nothing on other databases, where ``FOR UPDATE`` locks the rows.
    Not before waiting on anything outside the database: the lock stops every writer of every
    process meanwhile."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if isinstance(driver, OneHopConnection):
        await driver.begin_immediate()

"""The data layer: one async engine per process, one session per unit of work.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout;
PostgreSQL runs on asyncpg with a ping at checkout, so a restarted server is reconnected to
by itself.
Services never commit: :meth:`Database.session` commits when the unit of work succeeds and
rolls back when it raises.

A PostgreSQL server that cannot be reached (refused, reset, silent past the connect or
command timeout, shutting down) raises :class:`DatabaseUnavailable` wherever the engine meets
it, in place of the driver's error: an API answers 503 with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_

from keel.core.errors import ServiceUnavailable
from keel.core.outages import Outcome, note_outage
from keel.core.sqlite import use_one_hop_connections
from keel.settings import Settings

#: Constraint names are fixed so that Alembic migrations are the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every Keel table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on SQLite too (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: What an API tells its caller to wait (``Retry-After``) while the database is unreachable.
UNAVAILABLE_RETRY_AFTER_SECONDS = 2


class DatabaseUnavailable(ServiceUnavailable):
    """The database did not answer: refused, reset, silent past a timeout, or shutting down.

    ``reason`` says which, without the server's address (the detail reaches API callers).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The database is unavailable ({reason}).",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
        self.reason = reason


#: SQLSTATEs of a server that cannot serve now: a connection exception (class 08), too many
#: connections, a shutdown (by an administrator or a crash), a start-up still running.
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")


def unavailability_reason(error: BaseException) -> str | None:
    """Why ``error`` means the database cannot be reached now, or ``None`` when it is another
    error (a constraint, bad SQL, a wrong password: retrying would not help)."""
    seen: BaseException | None = error
    for _ in range(4):  # the driver's error may be wrapped by SQLAlchemy's adapter
        if seen is None:
            return None
        if isinstance(seen, DatabaseUnavailable):
            return seen.reason
        if isinstance(seen, TimeoutError):
            return "no answer in time"
        if isinstance(seen, socket.gaierror):
            return "host name not resolved"
        if isinstance(seen, OSError):
            return os.strerror(seen.errno).lower() if seen.errno else "connection failed"
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return f"SQLSTATE {sqlstate}"
        seen = seen.__cause__
    return None


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def enable(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return enable


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.effective_database_url)
    pool = settings.database_pool
    # Sized as HikariCP recommends, fixed: SQLAlchemy closes an overflow connection as soon as
    # it is returned, so load above the pool size opened and closed a connection a request.
    sizing = {
        "pool_size": pool.size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.timeout_seconds,
    }
    # Statement values stay out of errors and logs: they hold password hashes, sealed
    # secrets and token digests.
    hidden = {"hide_parameters": True}
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, **sizing, **hidden)
        else:
            engine = create_async_engine(url, **hidden)
        busy_timeout = pool.sqlite_busy_timeout_seconds
        use_one_hop_connections(engine, busy_timeout=busy_timeout)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(round(busy_timeout * 1000)))
        return engine
    # Last in, first out: a unit of work gets the connection used a moment ago, which skips
    # the ping (PING_BYPASS_SECONDS) and is warm in the server's caches; the idle rest of the
    # pool is pinged when load brings it back.
    engine = create_async_engine(
        url,
        **sizing,
        **hidden,
        pool_use_lifo=True,
        connect_args=_postgres_connect_args(settings, bounded=True),
    )
    _ping_on_checkout(engine, pool.connect_timeout_seconds)
    _report_unavailability(engine)
    return engine


def _postgres_connect_args(settings: Settings, *, bounded: bool) -> dict[str, Any]:
    """asyncpg's timeouts: ``timeout`` bounds opening a connection; ``command_timeout`` each
    statement, unless ``bounded`` is false (a schema migration may build an index for long)."""
    pool = settings.database_pool
    arguments: dict[str, Any] = {"timeout": pool.connect_timeout_seconds}
    if bounded and pool.command_timeout_seconds:
        arguments["command_timeout"] = pool.command_timeout_seconds
    return arguments


def _report_unavailability(engine: AsyncEngine) -> None:
    """Turn the driver's errors of an unreachable server into :class:`DatabaseUnavailable`.

    Opening a connection goes through ``do_connect``; a statement, a commit or a rollback
    that fails goes through ``handle_error``. There the connection is closed at once and
    dropped from the pool: SQLAlchemy would otherwise say goodbye to the server first and
    wait up to 2 s for an answer that, from a silent server, never comes.
    """

    @event.listens_for(engine.sync_engine, "do_connect")
    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as error:
            reason = unavailability_reason(error)
            if reason is None:
                raise  # a wrong password or database name: configuration, not an outage
            note_outage("database", "connect", reason, outcome=Outcome.fail_closed)
            raise DatabaseUnavailable(reason) from error

    @event.listens_for(engine.sync_engine, "handle_error")
    def unavailable(context: ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if not isinstance(error, Exception):
            # A cancellation (a request given up, an asyncio.timeout) must stay one, though
            # SQLAlchemy drops the connection it interrupted as if disconnected.
            return None
        reason = unavailability_reason(error)
        if reason is None and context.is_disconnect:
            reason = "connection lost"
        if reason is None:
            return None
        connection = context.connection
        if connection is not None and not connection.invalidated and not connection.closed:
            driver_connection = connection.connection.driver_connection
            if driver_connection is not None:
                driver_connection.terminate()
        context.is_disconnect = True
        # A statement that ran out of time may be one slow query on a healthy server: only
        # its connection goes. A refused or reset one means every pooled one is suspect.
        context.invalidate_pool_on_disconnect = not isinstance(error, TimeoutError)
        note_outage("database", "statement", reason, outcome=Outcome.fail_closed)
        return DatabaseUnavailable(reason)


#: A connection back in the pool for less than this is handed out without a ping (as
#: HikariCP's alive-bypass window): under load most checkouts skip the round trip, and a
#: server restart still costs at most the requests of that half second.
PING_BYPASS_SECONDS = 0.5
_RETURNED_AT = "keel.returned_at"


def _ping_on_checkout(engine: AsyncEngine, timeout: float) -> None:
    """Pessimistic disconnect handling, one round trip a checkout.

    SQLAlchemy's ``pool_pre_ping`` on asyncpg makes three (``BEGIN``, ``;``, ``ROLLBACK``)
    before every unit of work; one simple-protocol ``SELECT 1`` proves the connection alive in
    one. A dead connection is replaced by a fresh one before the unit of work sees it, so a
    restarted server costs no failed request.
    """

    async def select_one(connection: Any) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # of the caller that lands as the query completes.
        async with asyncio.timeout(timeout):
            await connection.execute("SELECT 1")

    @event.listens_for(engine.sync_engine, "checkout")
    def ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is not None and time.monotonic() - returned < PING_BYPASS_SECONDS:
            return  # it answered a moment ago
        try:
            await_(select_one(proxy.driver_connection))
        except Exception as error:
            # Closed at once: a polite close would wait for a server that may not answer.
            proxy.driver_connection.terminate()
            raise DisconnectionError("the pooled connection is gone") from error

    @event.listens_for(engine.sync_engine, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()


class Database:
    """The engine and session factory of one process."""

    def __init__(self, engine: AsyncEngine, *, settings: Settings | None = None) -> None:
        self.engine = engine
        self._settings = settings
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings), settings=settings)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits when the block succeeds, rolls back when it raises."""
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def schema_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for schema migrations, whose statements may take as long as they
        need (building an index over a large table): on PostgreSQL, on a connection of its
        own without the command timeout."""
        settings = self._settings
        if (
            settings is None
            or self.dialect != "postgresql"
            or not settings.database_pool.command_timeout_seconds
        ):
            async with self.engine.begin() as connection:
                yield connection
            return
        engine = create_async_engine(
            self.engine.url,
            poolclass=NullPool,
            hide_parameters=True,
            connect_args=_postgres_connect_args(settings, bounded=False),
        )
        _report_unavailability(engine)
        try:
            async with engine.begin() as connection:
                yield connection
        finally:
            await engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def pool_stats(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        stats = {}
        for name in ("size", "checkedout", "overflow", "checkedin"):
            method = getattr(pool, name, None)
            if callable(method):
                stats[name.replace("checked", "checked_")] = int(method())
        return stats

    async def dispose(self) -> None:
        await self.engine.dispose()

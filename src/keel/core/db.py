"""The data layer: one async engine per process, one session per unit of work.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout;
PostgreSQL runs on asyncpg with a ping at checkout, so a restarted server is reconnected to
by itself.
Services never commit: :meth:`Database.session` commits when the unit of work succeeds and
rolls back when it raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_

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


SQLITE_BUSY_TIMEOUT_MS = 5000


def _enable_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
        use_one_hop_connections(engine, busy_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        event.listen(engine.sync_engine, "connect", _enable_sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url, **sizing, **hidden, connect_args={"timeout": pool.timeout_seconds}
    )
    _ping_on_checkout(engine, pool.timeout_seconds)
    return engine


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
            raise DisconnectionError("the pooled connection is gone") from error

    @event.listens_for(engine.sync_engine, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()


class Database:
    """The engine and session factory of one process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings))

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

"""The data layer on SQLite and PostgreSQL: UTC timestamps, SQLite pragmas, units of work."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import Integer, MetaData, String, event, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keel.core.db import Database, DatabaseUnavailable, UTCDateTime, unavailability_reason
from keel.core.ids import new_id
from keel.core.tenancy import Tenant, TenantScoped, bind_tenant, create_tenant
from keel.settings import DatabasePoolSettings, Settings
from tests.support.tables import add_tenants_stub, created_tables, unique_name


class ScratchBase(DeclarativeBase):
    metadata = MetaData()


add_tenants_stub(ScratchBase.metadata)


class Reading(ScratchBase):
    __tablename__ = unique_name("test_reading")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Note(TenantScoped, ScratchBase):
    __tablename__ = unique_name("test_note")

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    text: Mapped[str] = mapped_column(String(100))


@pytest.fixture
async def db(database: Database) -> AsyncIterator[Database]:
    async with created_tables(database, ScratchBase.metadata):
        yield database


async def store(db: Database, taken_at: datetime | None) -> datetime | None:
    async with db.session() as session:
        reading = Reading(taken_at=taken_at)
        session.add(reading)
        await session.flush()
        reading_id = reading.id
    async with db.session() as session:
        return await session.scalar(select(Reading.taken_at).where(Reading.id == reading_id))


class TestUTCDateTime:
    async def test_utc_datetime_round_trips_aware_and_exact(self, db: Database) -> None:
        moment = datetime(2026, 3, 29, 1, 59, 59, 123456, tzinfo=UTC)
        loaded = await store(db, moment)
        assert loaded == moment
        assert loaded is not None
        assert loaded.tzinfo is UTC

    async def test_other_zone_is_stored_as_the_same_instant_in_utc(self, db: Database) -> None:
        india = timezone(timedelta(hours=5, minutes=30))
        loaded = await store(db, datetime(2026, 1, 1, 5, 30, tzinfo=india))
        assert loaded == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        assert loaded is not None
        assert loaded.utcoffset() == timedelta(0)

    async def test_null_stays_null(self, db: Database) -> None:
        assert await store(db, None) is None

    async def test_naive_datetime_is_refused_and_nothing_is_stored(self, db: Database) -> None:
        with pytest.raises(StatementError, match="naive datetimes are refused"):
            await store(db, datetime(2026, 1, 1, 12, 0))  # naive: the point of the test
        async with db.session() as session:
            assert await session.scalar(select(Reading.id)) is None

    async def test_utc_order_is_kept_across_zones(self, db: Database) -> None:
        new_york = timezone(timedelta(hours=-5))
        earlier = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
        later = datetime(2026, 1, 1, 19, 30, tzinfo=new_york)  # 00:30 UTC the next day
        await store(db, later)
        await store(db, earlier)
        async with db.session() as session:
            statement = select(Reading.taken_at).order_by(Reading.taken_at)
            ordered = list(await session.scalars(statement))
        assert ordered == [earlier, later]


class TestSession:
    async def test_unit_of_work_commits_when_the_block_succeeds(self, db: Database) -> None:
        slug = unique_name("commit").replace("_", "-")
        async with db.session() as session:
            await create_tenant(session, slug)
        async with db.session() as session:
            assert await session.scalar(select(Tenant.slug).where(Tenant.slug == slug)) == slug

    async def test_unit_of_work_rolls_back_when_the_block_raises(self, db: Database) -> None:
        slug = unique_name("rollback").replace("_", "-")

        async def write_then_fail() -> None:
            async with db.session() as session:
                await create_tenant(session, slug)
                raise LookupError("something after the write failed")

        with pytest.raises(LookupError):
            await write_then_fail()
        async with db.session() as session:
            assert await session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is None

    async def test_foreign_keys_are_enforced(self, db: Database) -> None:
        async def add_note_of_missing_tenant() -> None:
            async with db.session() as session:
                bind_tenant(session, new_id())  # a tenant that does not exist
                session.add(Note(text="orphan"))

        with pytest.raises(IntegrityError):
            await add_note_of_missing_tenant()

    async def test_a_failed_statement_names_none_of_its_values(self, db: Database) -> None:
        """Errors are logged and reported: the values of a refused statement (a password
        hash, a sealed secret, a token digest) must not ride along in their text."""
        secret = "argon2-hash-" + new_id()

        async def add_note_of_missing_tenant() -> None:
            async with db.session() as session:
                bind_tenant(session, new_id())
                session.add(Note(text=secret))

        with pytest.raises(IntegrityError) as refused:
            await add_note_of_missing_tenant()
        assert "INSERT INTO" in str(refused.value)  # the statement is still told
        assert secret not in str(refused.value)
        assert secret not in repr(refused.value)

    async def test_ping_reaches_the_database(self, db: Database) -> None:
        """A ping runs ``SELECT 1`` on a pooled connection and gives the connection back."""
        statements: list[str] = []

        def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            statements.append(statement)

        event.listen(db.engine.sync_engine, "before_cursor_execute", record)
        try:
            await db.ping()
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        assert statements == ["SELECT 1"]
        assert db.pool_stats()["checked_out"] == 0


class TestSQLite:
    @pytest.fixture
    async def sqlite_database(self, tmp_path: Path) -> AsyncIterator[Database]:
        database = Database.from_settings(
            Settings(
                database_url=f"sqlite:///{tmp_path / 'nested' / 'keel.db'}",
                database_pool=DatabasePoolSettings(sqlite_busy_timeout_seconds=7.5),
            )
        )
        yield database
        await database.dispose()

    async def test_every_connection_runs_wal_with_foreign_keys_and_busy_timeout(
        self, sqlite_database: Database
    ) -> None:
        engine = sqlite_database.engine
        async with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                assert (await connection.scalar(text("PRAGMA journal_mode"))) == "wal"
                assert (await connection.scalar(text("PRAGMA foreign_keys"))) == 1
                assert (await connection.scalar(text("PRAGMA busy_timeout"))) == 7500

    async def test_missing_data_directory_is_created(
        self, sqlite_database: Database, tmp_path: Path
    ) -> None:
        await sqlite_database.ping()
        assert (tmp_path / "nested" / "keel.db").exists()


async def test_load_above_the_pool_size_waits_instead_of_opening_connections(
    settings: Settings,
) -> None:
    """Overflow connections are closed as soon as they are returned: a sustained load above
    a pool with overflow opened and closed a connection per unit of work. The default pool is
    fixed, so twelve concurrent units of work share its three connections."""
    pool = DatabasePoolSettings(size=3)
    database = Database.from_settings(settings.model_copy(update={"database_pool": pool}))
    opened = []
    event.listen(database.engine.sync_engine, "connect", lambda *_: opened.append(1))

    async def unit_of_work() -> None:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.01)  # hold the connection, as a request does

    try:
        for _ in range(3):
            await asyncio.gather(*(unit_of_work() for _ in range(12)))
        assert len(opened) <= 3
        assert database.pool_stats()["overflow"] <= 0
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_postgresql_pool_uses_the_configured_size(postgres_url: str) -> None:
    database = Database.from_settings(
        Settings(database_url=postgres_url, database_pool={"size": 3, "max_overflow": 1})
    )
    try:
        await database.ping()
        stats = database.pool_stats()
        assert stats["size"] == 3
        assert stats["checked_out"] == 0
    finally:
        await database.dispose()


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 5432)"),
            "connection refused",
        ),
        (ConnectionResetError(104, "reset"), "connection reset by peer"),
        (TimeoutError(), "no answer in time"),
        (socket.gaierror(-2, "Name or service not known"), "host name not resolved"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "SQLSTATE 57P03"),
        (asyncpg.TooManyConnectionsError("too many clients"), "SQLSTATE 53300"),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), "SQLSTATE 08003"),
        (
            _raised_from(RuntimeError("adapted"), asyncpg.AdminShutdownError("bye")),
            "SQLSTATE 57P01",
        ),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (asyncpg.InvalidPasswordError("password authentication failed"), None),
        (asyncpg.InvalidCatalogNameError('database "nope" does not exist'), None),
        (ValueError("a bug"), None),
    ],
)
def test_only_an_unreachable_server_counts_as_unavailable(
    error: BaseException, reason: str | None
) -> None:
    """What retrying later may fix is an outage (503); a constraint, a wrong password or a
    missing database is not, and the address of the server never appears in the reason."""
    assert unavailability_reason(error) == reason


def test_unavailable_tells_the_caller_when_to_retry_without_naming_the_server() -> None:
    error = DatabaseUnavailable("connection refused")
    assert error.status == 503
    assert error.type == "urn:keel:problem:unavailable"
    assert error.detail == "The database is unavailable (connection refused)."
    assert int(error.headers["Retry-After"]) >= 1


@pytest.mark.postgres
async def test_a_statement_past_the_command_timeout_is_unavailable_but_migrations_are_exempt(
    postgres_url: str,
) -> None:
    """A statement the server does not answer in time ends the unit of work with
    :class:`DatabaseUnavailable` and drops only its connection; the pool serves the next one.
    A schema migration may take as long as it needs."""
    database = Database.from_settings(
        Settings(database_url=postgres_url, database_pool={"command_timeout_seconds": 0.5})
    )
    try:
        with pytest.raises(DatabaseUnavailable, match="no answer in time"):
            async with database.session() as session:
                await session.execute(text("SELECT pg_sleep(1.5)"))
        async with database.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        async with database.schema_transaction() as connection:
            await connection.execute(text("SELECT pg_sleep(1.0)"))
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_a_unit_of_work_cut_short_by_its_caller_is_not_an_outage(postgres_url: str) -> None:
    """A cancelled request or an ``asyncio.timeout`` around a unit of work ends it as asyncio
    says (``CancelledError``, ``TimeoutError``), not as :class:`DatabaseUnavailable`."""
    database = Database.from_settings(Settings(database_url=postgres_url))
    try:
        with pytest.raises(TimeoutError) as raised:
            async with asyncio.timeout(0.3), database.session() as session:
                await session.execute(text("SELECT pg_sleep(2)"))
        assert not isinstance(raised.value, DatabaseUnavailable)
        async with database.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await database.dispose()

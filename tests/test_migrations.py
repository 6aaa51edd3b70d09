"""The one migration history: its head, and that it builds exactly the tables the models say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from keel.core.db import Database
from keel.migrations import (
    HEAD_REVISION,
    create_fresh,
    current_revision,
    load_all_models,
    script_head_revision,
    upgrade,
)
from keel.settings import Settings


def test_recorded_head_is_the_head_of_the_revision_files() -> None:
    assert script_head_revision() == HEAD_REVISION


async def test_migrated_schema_matches_the_models(database: Database) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, load_all_models()))

    async with database.engine.connect() as connection:
        diff = await connection.run_sync(differences)
    assert diff == []
    assert await current_revision(database) == HEAD_REVISION


async def test_an_empty_database_has_no_revision(empty_postgres_url: str) -> None:
    database = Database.from_settings(Settings(database_url=empty_postgres_url))
    try:
        assert await current_revision(database) is None
    finally:
        await database.dispose()


async def _schema_differences(database: Database) -> list[Any]:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, load_all_models()))

    async with database.engine.connect() as connection:
        return await connection.run_sync(differences)


async def _assert_built_at_head_in_one_step(url: str) -> None:
    database = Database.from_settings(Settings(database_url=url))
    try:
        assert await create_fresh(database) is True
        assert await current_revision(database) == HEAD_REVISION
        assert await _schema_differences(database) == []
        # Alembic agrees it is at head: upgrading changes nothing; a second build is refused.
        assert await upgrade(database) == (HEAD_REVISION, HEAD_REVISION)
        assert await create_fresh(database) is False
    finally:
        await database.dispose()


async def test_fresh_sqlite_database_is_built_at_head_in_one_step(tmp_path: Path) -> None:
    await _assert_built_at_head_in_one_step(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")


async def test_fresh_postgres_database_is_built_at_head_in_one_step(
    empty_postgres_url: str,
) -> None:
    await _assert_built_at_head_in_one_step(empty_postgres_url)


async def test_a_database_with_tables_is_never_rebuilt(database: Database) -> None:
    assert await create_fresh(database) is False
    assert await current_revision(database) == HEAD_REVISION

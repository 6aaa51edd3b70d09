"""The one migration history: its head, and that it builds exactly the tables the models say."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from keel.core.db import Database
from keel.migrations import (
    HEAD_REVISION,
    current_revision,
    load_all_models,
    script_head_revision,
)


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
    from keel.settings import Settings

    database = Database.from_settings(Settings(database_url=empty_postgres_url))
    try:
        assert await current_revision(database) is None
    finally:
        await database.dispose()

"""One Alembic history for the whole platform, run programmatically.

``keel migrate`` and the embedded default's start-up call :func:`upgrade`; a PostgreSQL
deployment whose schema is behind refuses to start (:func:`ensure_schema_current`).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from keel.core.db import Base, Database

MIGRATIONS_DIR = Path(__file__).parent

#: Modules holding tables, imported so that ``Base.metadata`` knows every table.
MODEL_MODULES = ("keel.core.tenancy", "keel.core.audit", "keel.auth.models")


class SchemaOutOfDate(RuntimeError):
    """The database schema is not at the head of the migration history."""


def load_all_models() -> Any:
    for module in MODEL_MODULES:
        import_module(module)
    return Base.metadata


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(database: Database) -> str | None:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``revision``; returns the revisions before and after."""

    def run(connection: Connection) -> tuple[str | None, str | None]:
        before = _current_revision(connection)
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return before, _current_revision(connection)

    async with database.engine.begin() as connection:
        return await connection.run_sync(run)


async def ensure_schema_current(database: Database) -> str | None:
    """Raise :class:`SchemaOutOfDate` unless the schema is at the head revision."""
    current, head = await current_revision(database), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at {current or 'nothing'}, this Keel needs {head}: "
            "run `keel migrate`"
        )
    return current

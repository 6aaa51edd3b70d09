"""The schema's one Alembic history (the scripts in ``keel/migrations/``), run programmatically.

``keel migrate`` and the embedded default's start-up call :func:`upgrade`; a PostgreSQL
deployment whose schema is behind refuses to start (:func:`ensure_schema_current`).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from keel.core.db import Base, Database

if TYPE_CHECKING:
    from alembic.config import Config

#: The Alembic scripts: a directory of files, read by Alembic, never imported from here.
MIGRATIONS_DIR = Path(__file__).parents[1] / "migrations"

#: The newest revision of the history. Kept here so that a start-up on a current schema reads
#: one row instead of importing Alembic (a fifth of a cold start); a test holds it equal to
#: the head Alembic computes from ``versions/``.
HEAD_REVISION = "0014"

#: Modules holding tables, imported so that ``Base.metadata`` knows every table.
MODEL_MODULES = (
    "keel.core.tenancy",
    "keel.core.sealed",
    "keel.core.changes",
    "keel.core.audit",
    "keel.core.idempotency",
    "keel.auth.models",
    "keel.audit.models",
    "keel.secrets.models",
    "keel.config.models",
    "keel.flags.models",
    "keel.jobs.models",
    "keel.notify.models",
    "keel.gateway.models",
    "keel.storage.models",
)


class SchemaOutOfDate(RuntimeError):
    """The database schema is not at the head of the migration history."""


def load_all_models() -> Any:
    for module in MODEL_MODULES:
        import_module(module)
    return Base.metadata


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return HEAD_REVISION


def script_head_revision() -> str | None:
    """The head as Alembic computes it from the revision files."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` names a migration (or ``head``) that ``keel migrate`` can reach."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    if revision in ("head", "heads"):
        return True
    if not revision.strip():
        return False
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(database: Database) -> str | None:
    """The schema's revision, read from ``alembic_version`` (None for an empty database)."""
    async with database.engine.connect() as connection:
        try:
            revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:
            return None  # no alembic_version table yet
    return str(revision) if revision is not None else None


async def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``revision``; returns the revisions before and after."""

    from alembic import command

    def run(connection: Connection) -> tuple[str | None, str | None]:
        before = _current_revision(connection)
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return before, _current_revision(connection)

    async with database.schema_transaction() as connection:
        return await connection.run_sync(run)


async def create_fresh(database: Database) -> bool:
    """On a database with no tables, build the head schema from the models in one go.

    The embedded default's first start uses this instead of replaying every revision: the
    result is the same schema (a test compares it with the models, and another compares the
    migrated schema with the models) stamped with the head revision, at a fraction of the
    cost. Returns False, touching nothing, when the database has any table.
    """

    def run(connection: Connection) -> bool:
        if inspect(connection).get_table_names():
            return False
        load_all_models().create_all(connection)
        # Alembic's own bookkeeping table, as `alembic stamp` creates it.
        connection.execute(
            text(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            )
        )
        connection.execute(
            text("INSERT INTO alembic_version (version_num) VALUES (:revision)"),
            {"revision": HEAD_REVISION},
        )
        return True

    async with database.schema_transaction() as connection:
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

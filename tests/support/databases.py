"""Throw-away PostgreSQL databases for tests that need one of their own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url


def postgres_dsn(url: str) -> str:
    """``url`` as asyncpg takes it (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(postgres_dsn(admin_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return (
        make_url(admin_url)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


async def drop_postgres_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(postgres_dsn(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.contextmanager
def database_for(request: pytest.FixtureRequest, prefix: str) -> Iterator[str | None]:
    """The database of a test parametrized over ``"sqlite"`` and ``"postgresql"``: ``None`` for
    SQLite (the deployment's embedded default); for PostgreSQL the URL of a new database
    ``<prefix>_<random>``, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    admin_url = str(request.getfixturevalue("postgres_admin_url"))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_postgres_database(admin_url, name))
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(admin_url, name))

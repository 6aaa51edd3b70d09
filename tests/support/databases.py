"""Throw-away PostgreSQL databases for tests that need one of their own."""

from __future__ import annotations

import asyncpg
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

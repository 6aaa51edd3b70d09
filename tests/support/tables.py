"""Test-only tables, kept out of ``keel.core.db.Base.metadata`` (Alembic's target).

A test module declares its models on its own :class:`sqlalchemy.orm.DeclarativeBase` and
calls :func:`add_tenants_stub` on that base's metadata, so that ``TenantScoped``'s foreign key
to ``tenants.id`` resolves; :func:`created_tables` then creates every table but the stub in a
database migrated by Keel (where the real ``tenants`` table lives) and drops them afterwards.
Table names carry a random suffix: the PostgreSQL test database is shared by the session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Column, MetaData, String, Table

from keel.core.db import Database

TENANTS = "tenants"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def add_tenants_stub(metadata: MetaData) -> None:
    """Stand-in for Keel's ``tenants`` table, to resolve foreign keys; never created."""
    Table(TENANTS, metadata, Column("id", String(36), primary_key=True))


@asynccontextmanager
async def created_tables(database: Database, metadata: MetaData) -> AsyncIterator[Database]:
    tables = [table for table in metadata.sorted_tables if table.name != TENANTS]
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all, tables=tables)
    try:
        yield database
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all, tables=tables)

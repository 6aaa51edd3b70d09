"""A throw-away PostgreSQL database for a benchmark: created fresh, always dropped after."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _execute_as_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """``with postgres_database("keel_bench_x") as url:`` a new, empty database's SQLAlchemy
    (asyncpg) URL, dropped on exit even when connections to it are still open.

    Call it outside an event loop: it runs its own to create and drop the database.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute_as_admin(f'CREATE DATABASE "{name}"'))
    try:
        server = POSTGRES_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://")
        yield f"{server.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_execute_as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

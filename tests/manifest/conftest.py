"""A Keel on SQLite or PostgreSQL that ``keel apply`` runs against, and a way to read back
what it holds through the services' own service layers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.support.keel_cli import Deployment, initialised_deployment

T = TypeVar("T")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_apply_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(request, tmp_path, name) as found:
        yield found


def read_keel(deployment: Deployment, work: Callable[[AsyncSession, str], Awaitable[T]]) -> T:
    """``work(session, tenant_id)`` in a read of the deployment's database (tenant default)."""
    from keel.core.db import Database
    from keel.core.tenancy import bind_tenant, get_tenant_by_slug
    from keel.settings import load_settings

    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(deployment.env)
    os.chdir(deployment.cwd)
    try:
        settings = load_settings()

        async def main() -> T:
            database = Database.from_settings(settings)
            try:
                async with database.session() as session:
                    tenant_id = (await get_tenant_by_slug(session, "default")).id
                    bind_tenant(session, tenant_id)
                    return await work(session, tenant_id)
            finally:
                await database.dispose()

        return asyncio.run(main())
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


Reader = Callable[[AsyncSession, str], Awaitable[Any]]

"""Fixtures shared by the gateway's end-to-end test modules."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.e2e_support import GatewayDeployment
from tests.support.databases import create_postgres_database, drop_postgres_database


@pytest.fixture
def shared_deployment(
    tmp_path: Path, postgres_admin_url: str, redis_url: str
) -> Iterator[GatewayDeployment]:
    """An initialised Keel on a new PostgreSQL database of this test, with Redis."""
    name = f"keel_gw_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_postgres_database(postgres_admin_url, name))
    try:
        yield GatewayDeployment.initialise(
            tmp_path, KEEL_DATABASE_URL=url, KEEL_REDIS_URL=redis_url
        )
    finally:
        asyncio.run(drop_postgres_database(postgres_admin_url, name))

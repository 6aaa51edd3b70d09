"""Fixtures of the jobs engine's tests."""

from __future__ import annotations

import uuid

import pytest

from keel.core.db import Database
from keel.core.tenancy import create_tenant


@pytest.fixture
async def tenant_id(database: Database) -> str:
    """A tenant of this test alone (the PostgreSQL database is shared by the session)."""
    async with database.session() as session:
        tenant = await create_tenant(session, f"jobs-{uuid.uuid4().hex[:12]}")
        return tenant.id

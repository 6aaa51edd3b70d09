"""Fixtures of the flags SDK tests: the in-process Keel (SQLite and PostgreSQL, through the
``app`` fixture) served over real TCP by uvicorn (a watch is a streamed response), a tenant
administrator, and an environment with a few flags built through the API."""

from __future__ import annotations

import httpx
import pytest

from tests.client.flags.flags_sdk_support import Environment, build_environment
from tests.support.tenants import TenantAdmin


@pytest.fixture
async def environment(client: httpx.AsyncClient, admin: TenantAdmin) -> Environment:
    """A new environment holding the flags of :func:`build_environment`."""
    return await build_environment(client, admin.headers)

"""Fixtures of the flags SDK tests: the in-process Keel (SQLite and PostgreSQL, through the
``app`` fixture) served over real TCP by uvicorn (a watch is a streamed response), a tenant
administrator, and an environment with a few flags built through the API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from flags_sdk_support import Environment, build_environment

from auth.conftest import TenantAdmin, make_tenant_admin
from support.asgi import serve_over_tcp


@pytest.fixture
async def admin(app: FastAPI) -> TenantAdmin:
    """A tenant of this test alone and its administrator's API key."""
    return await make_tenant_admin(app)


@pytest.fixture
async def keel_url(app: FastAPI) -> AsyncIterator[str]:
    """The started app on a port of 127.0.0.1."""
    async with serve_over_tcp(app) as url:
        yield url


@pytest.fixture
async def environment(client: httpx.AsyncClient, admin: TenantAdmin) -> Environment:
    """A new environment holding the flags of :func:`build_environment`."""
    return await build_environment(client, admin.headers)

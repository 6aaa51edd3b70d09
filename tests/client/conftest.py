"""Fixtures the SDK tests share: a tenant administrator of the in-process Keel (SQLite and
PostgreSQL, through the ``app`` fixture), and that Keel served over real TCP by uvicorn (a
watch is a streamed response)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

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

"""Fixtures the SDK tests share: the in-process Keel (SQLite and PostgreSQL, through the
``app`` fixture) served over real TCP by uvicorn (a watch is a streamed response)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from tests.support.asgi import serve_over_tcp


@pytest.fixture
async def keel_url(app: FastAPI) -> AsyncIterator[str]:
    """The started app on a port of 127.0.0.1."""
    async with serve_over_tcp(app) as url:
        yield url

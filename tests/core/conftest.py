"""Fixtures of the core plumbing tests: broadcasts on both implementations, an HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keel.core.broadcast import Broadcast
from keel.settings import Settings
from tests.support.broadcasts import open_broadcast


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def broadcast_redis_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the in-process broadcast, else a reachable Redis (skip/fail if absent)."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def broadcast(broadcast_redis_url: str | None) -> AsyncIterator[Broadcast]:
    """Each test using this runs twice: on InMemoryBroadcast and on RedisBroadcast."""
    opened = await open_broadcast(broadcast_redis_url)
    yield opened
    await opened.disconnect()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings of an app whose tests are about HTTP, not the database: SQLite, 1 KiB bodies."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}",
        data_dir=tmp_path / ".keel",
        redis_url=None,
        max_body_bytes=1024,
    )

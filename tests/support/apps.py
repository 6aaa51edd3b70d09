"""A Keel app of a test's own settings, and units of work on its database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from keel.app import create_app
from keel.settings import AuthSettings, Settings

#: How long an app's start-up or shutdown may take in a test. asgi-lifespan's default, 5 s,
#: failed tests at setup on a loaded machine (start-up checks the schema and starts each
#: service); a start that hangs still fails, with the lifespan's own error.
LIFESPAN_TIMEOUT_SECONDS = 30.0


def lifespan_of(app: FastAPI) -> LifespanManager:
    """``app``'s lifespan (start-up on entry, shutdown on exit), with the tests' timeouts."""
    return LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT_SECONDS, shutdown_timeout=LIFESPAN_TIMEOUT_SECONDS
    )


@asynccontextmanager
async def unit_of_work(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A session of the app's database that commits when the block succeeds."""
    async with app.state.keel.database.session() as session:
        yield session


def with_auth(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some auth settings changed."""
    auth = AuthSettings.model_validate({**settings.auth.model_dump(), **changes})
    return settings.model_copy(update={"auth": auth})


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of ``settings`` with its lifespan run, and a client talking to it."""
    application = create_app(settings)
    async with lifespan_of(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
            yield application, http

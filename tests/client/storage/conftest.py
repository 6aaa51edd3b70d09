"""Fixtures of the storage SDK's tests: a Keel app with the storage service (the local blob
store, the session's real clamd with the tests' EICAR signature, no background work: a test
runs the scans itself with ``scan()``), served over TCP (downloads are streamed answers),
a tenant's administrator, and a ``Keel`` on it whose calls give up quickly.

``public_url`` is unset, so presigned URLs name the address the request came to: the test
server's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import FastAPI

from keel.app import create_app
from keel.core.context import AppContext
from keel.jobs.runner import PlatformRunner
from keel.settings import Settings
from keel.storage.tasks import TASKS as STORAGE_TASKS
from keel_client import Keel
from tests.client.notify.conftest import quick_retries
from tests.storage.conftest import clamd_server, storage_settings
from tests.support.apps import lifespan_of
from tests.support.clamd import ClamdServer
from tests.support.tenants import TenantAdmin

__all__ = ["app", "clamd_server", "keel", "scan"]


@pytest.fixture
async def app(settings: Settings, clamd_server: ClamdServer) -> AsyncIterator[FastAPI]:
    configured = storage_settings(settings, clamd_address=clamd_server.address)
    configured = configured.model_copy(update={"public_url": None})
    application = create_app(configured, run_background=False)
    async with lifespan_of(application):
        yield application


@pytest.fixture
def scan(app: FastAPI) -> Callable[[], Awaitable[int]]:
    """Run every scan job due now (what ``keel worker`` runs); answers how many ran."""
    context: AppContext = app.state.keel

    async def run() -> int:
        return await PlatformRunner(context, list(STORAGE_TASKS)).drain()

    return run


@pytest.fixture
async def keel(keel_url: str, admin: TenantAdmin) -> AsyncIterator[Keel]:
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), timeout=10.0) as client:
        yield client

"""Fixtures of the SDK secrets tests: the in-process Keel (SQLite and PostgreSQL, through the
``app`` fixture), a tenant administrator, a counting transport, a clock and the SDK client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from keel_client.secrets import SecretsClient
from tests.client.secrets.sdk_secrets_support import BASE_URL, Clock, CountingTransport
from tests.support.tenants import TenantAdmin


@pytest.fixture
def transport(app: FastAPI) -> CountingTransport:
    return CountingTransport(app)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def secrets(
    admin: TenantAdmin, transport: CountingTransport, clock: Clock
) -> AsyncIterator[SecretsClient]:
    """The administrator's SDK client: default cache (5 s on ``clock``)."""
    async with SecretsClient(
        BASE_URL, auth=admin.api_key, transport=transport, clock=clock
    ) as client:
        yield client

"""Fixtures of the jobs SDK's tests: a Keel app (SQLite and PostgreSQL) served over TCP, a
tenant administrator, and a ``JobsClient`` with short timeouts and few retries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from keel_client.http import RetryPolicy
from keel_client.jobs import JobsClient
from tests.support.asgi import serve_over_tcp
from tests.support.tenants import TenantAdmin

#: Short leases keep the worker tests fast: heartbeats go every third of it.
LEASE_SECONDS = 1.5


def quick_client(url: str, api_key: str) -> JobsClient:
    """A client that gives up on an unreachable Keel in well under a second."""
    return JobsClient(
        url,
        auth=api_key,
        retry=RetryPolicy(max_retries=1, backoff_base=0.01, backoff_max=0.05),
        breaker=None,
        timeout=5.0,
    )


@pytest.fixture
async def jobs(keel_url: str, admin: TenantAdmin) -> AsyncIterator[JobsClient]:
    async with quick_client(keel_url, admin.api_key) as client:
        yield client


@pytest.fixture
def queue() -> str:
    """A queue of this test alone (tenants are per test too; this reads better in failures)."""
    return f"q-{uuid.uuid4().hex[:8]}"


#: ``app`` (already started) served on ``port`` until the block ends: Keel "starts" on an
#: address a client already uses, and "stops" again after.
serving = serve_over_tcp

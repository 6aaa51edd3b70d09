"""Fixtures of the notify SDK's tests: the notification API tests' own setup (an app without
background work, a tenant with a DKIM-signing ``default`` sender, an ``smtp`` provider
reaching a real aiosmtpd server, the ``onboarding`` category and the published ``welcome``
template; ``notify.deliver()`` runs the delivery jobs), served over TCP, and a ``Keel`` on
it whose calls give up quickly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel_client import Keel
from keel_client.http import RetryPolicy
from tests.notify.conftest import app, notify
from tests.support.tenants import TenantAdmin

__all__ = ["app", "keel", "notify", "quick_retries"]


def quick_retries() -> RetryPolicy:
    """Retries that wait milliseconds, not seconds: the tests stay fast."""
    return RetryPolicy(max_retries=2, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
async def keel(keel_url: str, admin: TenantAdmin) -> AsyncIterator[Keel]:
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), timeout=10.0) as client:
        yield client

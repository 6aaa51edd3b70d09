"""Fixtures for the base client's tests: one fault server per session, a key per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from keel_client.http import BreakerPolicy, RetryBudget
from tests.client.http.faultserver import FaultServer

#: A budget that never interferes unless a test is about the budget.
GENEROUS_BUDGET_PER_SECOND = 1000.0


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def key() -> str:
    """A fresh key, so per-key counters on the shared server start at zero."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def generous_budget() -> RetryBudget:
    return RetryBudget(min_retries_per_second=GENEROUS_BUDGET_PER_SECOND)


@pytest.fixture
def lenient_breaker() -> BreakerPolicy:
    """A breaker that stays closed through the failure bursts of retry tests."""
    return BreakerPolicy(minimum_calls=1000, window_size=1000)

"""The circuit breaker against a real failing upstream: opens, fails fast, recovers."""

from __future__ import annotations

import asyncio

import pytest

from keel_client.http import (
    BaseAPIClient,
    BreakerPolicy,
    CircuitOpenError,
    CircuitState,
    RetryPolicy,
    ServerError,
)
from tests.client.http.faultserver import FaultServer

BREAKER = BreakerPolicy(minimum_calls=4, window_size=4, failure_rate_threshold=0.5, cooldown=0.3)


def circuit_gauge(api: BaseAPIClient, host: str) -> float | None:
    return api.metrics_registry.get_sample_value(
        "keel_http_client_circuit_state", {"client": "BaseAPIClient", "host": host}
    )


async def test_breaker_opens_fails_fast_and_recovers_through_half_open(
    fault_server: FaultServer, key: str
) -> None:
    host = f"127.0.0.1:{fault_server.port}"
    async with BaseAPIClient(
        fault_server.url, breaker=BREAKER, retry=RetryPolicy(max_retries=0)
    ) as api:
        for _ in range(4):
            with pytest.raises(ServerError):
                await api.get(f"/flaky/{key}", params={"fail": 4})
        assert api.health().circuits[host].state is CircuitState.OPEN
        assert not api.health().is_healthy
        assert circuit_gauge(api, host) == 2

        with pytest.raises(CircuitOpenError) as caught:
            await api.get(f"/flaky/{key}", params={"fail": 4})
        assert fault_server.hits[key] == 4  # failed fast: nothing sent
        assert caught.value.host == host
        assert 0 < caught.value.retry_after <= 0.3
        assert caught.value.code == "circuit_open"
        assert caught.value.request_id

        await asyncio.sleep(0.35)
        assert api.health().circuits[host].state is CircuitState.HALF_OPEN
        assert circuit_gauge(api, host) == 1

        response = await api.get(f"/flaky/{key}", params={"fail": 4})
        assert response.json() == {"hit": 5}
        assert api.health().circuits[host].state is CircuitState.CLOSED
        assert circuit_gauge(api, host) == 0
        outcomes = {
            outcome: api.metrics_registry.get_sample_value(
                "keel_http_client_requests_total",
                {"client": "BaseAPIClient", "method": "GET", "host": host, "outcome": outcome},
            )
            for outcome in ("503", "circuit_open", "200")
        }
        assert outcomes == {"503": 4.0, "circuit_open": 1.0, "200": 1.0}


async def test_failed_probe_reopens_the_circuit(fault_server: FaultServer, key: str) -> None:
    host = f"127.0.0.1:{fault_server.port}"
    async with BaseAPIClient(
        fault_server.url, breaker=BREAKER, retry=RetryPolicy(max_retries=0)
    ) as api:
        for _ in range(4):
            with pytest.raises(ServerError):
                await api.get(f"/outage/{key}")
        await asyncio.sleep(0.35)
        with pytest.raises(ServerError):
            await api.get(f"/outage/{key}")  # the probe
        assert api.health().circuits[host].state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await api.get(f"/outage/{key}")
    assert fault_server.hits[key] == 5


async def test_4xx_does_not_trip_the_breaker(fault_server: FaultServer, key: str) -> None:
    async with BaseAPIClient(fault_server.url, breaker=BREAKER) as api:
        for _ in range(6):
            with pytest.raises(Exception, match="404"):
                await api.get("/problem/404")
        assert api.health().is_healthy


async def test_breakers_are_per_host(fault_server: FaultServer, key: str) -> None:
    async with BaseAPIClient(
        fault_server.url, breaker=BREAKER, retry=RetryPolicy(max_retries=0)
    ) as api:
        for _ in range(4):
            with pytest.raises(ServerError):
                await api.get(f"/outage/{key}")
        # Same server through its other listener: a different host:port, its own breaker.
        response = await api.get(f"{fault_server.raw_url}/reset/{key}")
    assert response.json() == {"ok": True}

"""Retries, deadlines and the retry budget against a real fault-injecting server."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from keel_client.http import (
    BaseAPIClient,
    BreakerPolicy,
    ClientError,
    RequestTimeout,
    RetryBudget,
    RetryBudgetExceeded,
    RetryPolicy,
    ServerError,
    SyncBaseAPIClient,
    TransportError,
)
from tests.client.http.faultserver import FAST_RETRY, FaultServer


@pytest.fixture
async def client(
    fault_server: FaultServer, generous_budget: RetryBudget, lenient_breaker: BreakerPolicy
) -> BaseAPIClient:
    async with BaseAPIClient(
        fault_server.url, retry=FAST_RETRY, retry_budget=generous_budget, breaker=lenient_breaker
    ) as api:
        yield api  # type: ignore[misc]


class TestRetries:
    async def test_get_is_retried_until_the_burst_ends(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        response = await client.get(f"/flaky/{key}", params={"fail": 2})
        assert response.json() == {"hit": 3}
        assert fault_server.hits[key] == 3

    async def test_request_id_is_the_same_on_every_attempt(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        await client.get(f"/flaky/{key}", params={"fail": 2})
        ids = {hit["x-request-id"] for hit in fault_server.seen[key]}
        assert len(ids) == 1
        assert len(ids.pop()) == 32

    async def test_caller_request_id_is_propagated(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        await client.get(f"/flaky/{key}", params={"fail": 1}, headers={"X-Request-ID": "req-1"})
        assert [hit["x-request-id"] for hit in fault_server.seen[key]] == ["req-1", "req-1"]

    async def test_gives_up_after_max_retries(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(ServerError) as caught:
            await client.get(f"/outage/{key}")
        assert caught.value.status == 503
        assert fault_server.hits[key] == 1 + FAST_RETRY.max_retries

    async def test_per_call_max_retries_overrides_the_client(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(ServerError):
            await client.get(f"/outage/{key}", max_retries=0)
        assert fault_server.hits[key] == 1

    async def test_500_is_not_retried(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(ServerError):
            await client.get(f"/flaky/{key}", params={"fail": 1, "status": 500})
        assert fault_server.hits[key] == 1

    async def test_post_without_idempotency_key_is_never_retried(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(ServerError):
            await client.post(f"/flaky/{key}", json={"amount": 10}, params={"fail": 1})
        assert fault_server.hits[key] == 1
        assert "idempotency-key" not in fault_server.seen[key][0]

    async def test_idempotent_post_is_retried_with_the_same_generated_key(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        response = await client.post(
            f"/flaky/{key}", json={"amount": 10}, params={"fail": 2}, idempotent=True
        )
        assert response.status_code == 200
        keys = [hit["idempotency-key"] for hit in fault_server.seen[key]]
        assert len(keys) == 3
        assert len(set(keys)) == 1
        assert len(keys[0]) == 36

    async def test_explicit_idempotency_key_is_sent_on_every_attempt(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        await client.patch(f"/flaky/{key}", json={}, params={"fail": 1}, idempotency_key="order-42")
        assert [hit["idempotency-key"] for hit in fault_server.seen[key]] == ["order-42"] * 2

    async def test_connection_resets_are_retried_for_get(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        response = await client.get(f"{fault_server.raw_url}/reset/{key}", params={"fail": 2})
        assert response.json() == {"ok": True}
        assert fault_server.hits[f"raw:{key}"] == 3

    async def test_connection_reset_on_post_is_a_transport_error_without_retry(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(TransportError) as caught:
            await client.post(f"{fault_server.raw_url}/reset/{key}", params={"fail": 1})
        assert caught.value.status is None
        assert caught.value.request_id
        assert fault_server.hits[f"raw:{key}"] == 1

    async def test_refused_connection_is_a_transport_error(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        async with BaseAPIClient(f"http://127.0.0.1:{port}", retry=FAST_RETRY) as api:
            with pytest.raises(TransportError, match="connect"):
                await api.get("/")


class TestRetryAfter:
    async def test_retry_after_seconds_is_honoured(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        started = time.monotonic()
        response = await client.get(f"/retry-after/{key}", params={"after": 1})
        assert response.status_code == 200
        assert time.monotonic() - started >= 1.0
        assert fault_server.hits[key] == 2

    async def test_retry_after_http_date_is_honoured(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        started = time.time()
        response = await client.get(f"/retry-after/{key}", params={"after": 2, "form": "date"})
        # HTTP-dates have one-second resolution: the wait is between 1 and 2 seconds.
        assert response.json()["at"] - started >= 1.0
        assert fault_server.hits[key] == 2

    async def test_retry_after_past_the_deadline_fails_at_once(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        started = time.monotonic()
        with pytest.raises(ClientError) as caught:
            await client.get(f"/retry-after/{key}", params={"after": 30}, deadline=2.0)
        assert caught.value.status == 429
        assert time.monotonic() - started < 5  # not the 30 s the answer asked for
        assert fault_server.hits[key] == 1


class TestDeadline:
    async def test_retries_stop_at_the_deadline(
        self, fault_server: FaultServer, key: str, generous_budget: RetryBudget
    ) -> None:
        retry = RetryPolicy(max_retries=1000, backoff_base=0.05, backoff_max=0.05)
        async with BaseAPIClient(
            fault_server.url, retry=retry, retry_budget=generous_budget, breaker=None
        ) as api:
            started = time.monotonic()
            # The last 503, or the deadline firing during the last attempt.
            with pytest.raises((ServerError, RequestTimeout)):
                await api.get(f"/outage/{key}", deadline=0.4)
            elapsed = time.monotonic() - started
        assert elapsed < 1.5  # not a thousand retries' 50 s; a loaded machine's room
        # Every retry started before the deadline; with sleeps of at most 50 ms that is few.
        assert 2 <= fault_server.hits[key] < 100

    async def test_deadline_cuts_a_body_that_trickles_in(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as caught:
            await client.get(
                f"/slow-body/{key}", params={"chunks": 60, "interval": 0.05}, deadline=0.3
            )
        assert time.monotonic() - started < 2.0  # the whole body would take 3 s
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.code == "timeout"

    async def test_read_timeout_is_retried_then_raised(
        self, client: BaseAPIClient, fault_server: FaultServer, key: str
    ) -> None:
        with pytest.raises(RequestTimeout):
            await client.get(f"/delay/{key}", params={"seconds": 1}, timeout=0.1, max_retries=1)
        assert fault_server.hits[key] == 2


class TestRetryBudget:
    async def test_budget_caps_retries_during_a_long_outage(
        self, fault_server: FaultServer, key: str
    ) -> None:
        budget = RetryBudget(ratio=0.1, min_retries_per_second=0.5, window=10.0)
        async with BaseAPIClient(
            fault_server.url, retry=FAST_RETRY, retry_budget=budget, breaker=None
        ) as api:
            errors: list[Exception] = []
            for _ in range(50):
                try:
                    await api.get(f"/outage/{key}")
                except ServerError as error:
                    errors.append(error)
                except RetryBudgetExceeded as error:
                    errors.append(error)
        exceeded = [error for error in errors if isinstance(error, RetryBudgetExceeded)]
        assert all(error.status == 503 for error in exceeded)
        assert all(isinstance(error.last_error, ServerError) for error in exceeded)
        exhausted = len(exceeded)
        # Without a budget: 50 calls x 4 attempts = 200 hits. With it: 50 + 10 % + 5.
        assert 50 < fault_server.hits[key] <= 50 + 5 + 5
        assert exhausted >= 40
        assert budget.snapshot().available == 0


class TestSyncFace:
    def test_sync_client_retries_and_keeps_the_idempotency_key(
        self, fault_server: FaultServer, key: str
    ) -> None:
        with SyncBaseAPIClient(fault_server.url, retry=FAST_RETRY, breaker=None) as api:
            response = api.post(f"/flaky/{key}", json={}, params={"fail": 2}, idempotent=True)
        assert response.json() == {"hit": 3}
        assert len({hit["idempotency-key"] for hit in fault_server.seen[key]}) == 1

    def test_sync_post_without_key_is_not_retried(
        self, fault_server: FaultServer, key: str
    ) -> None:
        with (
            SyncBaseAPIClient(fault_server.url, retry=FAST_RETRY) as api,
            pytest.raises(ServerError),
        ):
            api.post(f"/flaky/{key}", json={}, params={"fail": 1})
        assert fault_server.hits[key] == 1

    def test_sync_retries_stop_at_the_deadline(self, fault_server: FaultServer, key: str) -> None:
        retry = RetryPolicy(max_retries=1000, backoff_base=0.05, backoff_max=0.05)
        budget = RetryBudget(min_retries_per_second=1000.0)
        with SyncBaseAPIClient(
            fault_server.url, retry=retry, retry_budget=budget, breaker=None
        ) as api:
            started = time.monotonic()
            with pytest.raises((ServerError, RequestTimeout)):
                api.get(f"/outage/{key}", deadline=0.3)
            assert time.monotonic() - started < 1.5  # not a thousand retries' 50 s

    def test_sync_read_timeout_is_bounded_by_the_deadline(
        self, fault_server: FaultServer, key: str
    ) -> None:
        with SyncBaseAPIClient(fault_server.url, retry=FAST_RETRY) as api:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                api.get(f"/delay/{key}", params={"seconds": 3}, deadline=0.3)
            assert time.monotonic() - started < 2.0  # not the 3 s answer


async def test_http_client_options_pass_through(fault_server: FaultServer) -> None:
    async with BaseAPIClient(
        fault_server.url, limits=httpx.Limits(max_connections=2), http2=True
    ) as api:
        response = await api.get("/ok")
    # No TLS, so no ALPN: HTTP/2 is offered but HTTP/1.1 is what a plain socket speaks.
    assert response.http_version == "HTTP/1.1"

"""Static credentials and OAuth2 client credentials against a real token endpoint."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from keel_client.http import (
    APIKey,
    BaseAPIClient,
    BearerToken,
    ClientCredentials,
    ClientError,
    SyncBaseAPIClient,
)
from tests.client.http.faultserver import CLIENT_ID, CLIENT_SECRET, FaultServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def credentials(server: FaultServer, key: str, **overrides: object) -> ClientCredentials:
    return ClientCredentials(
        f"{server.url}/token/{key}",
        client_id=CLIENT_ID,
        client_secret=str(overrides.pop("client_secret", CLIENT_SECRET)),
        **overrides,  # type: ignore[arg-type]
    )


async def test_bearer_token_is_sent(fault_server: FaultServer) -> None:
    async with BaseAPIClient(fault_server.url, auth=BearerToken("t0k3n")) as api:
        headers = (await api.get("/echo")).json()["headers"]
    assert headers["authorization"] == "Bearer t0k3n"


async def test_api_key_goes_in_its_header(fault_server: FaultServer) -> None:
    async with BaseAPIClient(fault_server.url, auth=APIKey("k-1", header="X-Api-Token")) as api:
        headers = (await api.get("/echo")).json()["headers"]
    assert headers["x-api-token"] == "k-1"
    assert "authorization" not in headers


async def test_hundred_concurrent_calls_make_exactly_one_token_request(
    fault_server: FaultServer, key: str
) -> None:
    auth = credentials(fault_server, key)
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        responses = await asyncio.gather(*(api.get(f"/protected/{key}") for _ in range(100)))
    assert {response.status_code for response in responses} == {200}
    assert fault_server.tokens_issued[key] == 1
    assert auth.token_requests == 1
    assert fault_server.hits[key] == 100


async def test_token_is_refreshed_before_it_expires(fault_server: FaultServer, key: str) -> None:
    clock = FakeClock()
    auth = ClientCredentials(
        f"{fault_server.url}/token/{key}?expires_in=100",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_margin=10.0,
        clock=clock,
    )
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        await api.get(f"/protected/{key}")
        clock.now = 89.0
        await api.get(f"/protected/{key}")
        assert fault_server.tokens_issued[key] == 1
        clock.now = 91.0  # inside the margin: refreshed proactively, before it expires at 100
        response = await api.get(f"/protected/{key}")
    assert fault_server.tokens_issued[key] == 2
    assert response.json() == {"token": f"Bearer {key}-token-2"}


async def test_concurrent_proactive_refresh_is_single_flight(
    fault_server: FaultServer, key: str
) -> None:
    clock = FakeClock()
    auth = credentials(fault_server, key, refresh_margin=10.0, clock=clock)
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        await api.get(f"/protected/{key}")
        clock.now = 3595.0
        await asyncio.gather(*(api.get(f"/protected/{key}") for _ in range(50)))
    assert fault_server.tokens_issued[key] == 2


async def test_revoked_token_is_replaced_once_on_401(fault_server: FaultServer, key: str) -> None:
    auth = credentials(fault_server, key)
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        await api.get(f"/protected/{key}")
        fault_server.tokens_issued[key] += 1  # the server revokes token 1
        response = await api.get(f"/protected/{key}")
    assert response.status_code == 200
    assert auth.token_requests == 2
    assert response.json() == {"token": f"Bearer {key}-token-3"}


async def test_rejected_client_secret_raises_a_typed_error(
    fault_server: FaultServer, key: str
) -> None:
    auth = credentials(fault_server, key, client_secret="wrong")
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        with pytest.raises(ClientError) as caught:
            await api.get(f"/protected/{key}")
    assert caught.value.status == 401
    assert fault_server.hits[key] == 0


async def test_credentials_in_body_are_refused_by_a_basic_only_server(
    fault_server: FaultServer, key: str
) -> None:
    auth = credentials(fault_server, key, send_credentials_in_body=True)
    async with BaseAPIClient(fault_server.url, auth=auth) as api:
        with pytest.raises(ClientError):
            await api.get(f"/protected/{key}")
    assert fault_server.tokens_issued[key] == 0


def test_sync_client_credentials_are_single_flight_across_threads(
    fault_server: FaultServer, key: str
) -> None:
    auth = credentials(fault_server, key)
    with (
        SyncBaseAPIClient(fault_server.url, auth=auth) as api,
        ThreadPoolExecutor(max_workers=20) as pool,
    ):
        statuses = list(pool.map(lambda _: api.get(f"/protected/{key}").status_code, range(40)))
    assert set(statuses) == {200}
    assert fault_server.tokens_issued[key] == 1


def test_secret_is_not_in_the_repr(fault_server: FaultServer, key: str) -> None:
    auth = credentials(fault_server, key)
    assert CLIENT_SECRET not in repr(vars(auth))

"""``AuthClient`` and ``ServiceCredentials`` against a real ``keel serve``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import jwt
import pytest

from keel_client.auth import AuthClient, ServiceCredentials, TokenSet
from keel_client.http import BaseAPIClient, ClientError
from tests.client.auth.fleet_support import FLEET_AUDIENCE, FLEET_URL, PASSWORD, Client, Fleet, Keel

TOKEN_PATH = "/auth/v1/oauth/token"


class OrdersAPI(BaseAPIClient):
    """A fleet service's client for another fleet service."""

    base_url = FLEET_URL

    async def orders(self) -> dict[str, object]:
        response = await self.get("/orders")
        body: dict[str, object] = response.json()
        return body


@pytest.fixture(scope="module")
def username(keel: Keel, reader_role: str) -> str:
    return keel.create_user([reader_role])


@pytest.fixture
async def auth(keel: Keel) -> AsyncIterator[AuthClient]:
    async with AuthClient(keel.base_url) as client:
        yield client


async def test_login_returns_tokens_keel_accepts(
    auth: AuthClient, username: str, reader_role: str
) -> None:
    tokens = await auth.login(username, PASSWORD)

    assert isinstance(tokens, TokenSet)
    assert tokens.refresh_token is not None
    assert tokens.refresh_token.startswith("krt_")
    assert tokens.access_token not in repr(tokens)
    assert tokens.refresh_token not in repr(tokens)
    principal = await auth.me(tokens.access_token)
    assert principal.principal_type == "user"
    assert principal.roles == {reader_role}
    assert principal.has_permission("orders:order:read")


async def test_wrong_password_raises_a_401_client_error(auth: AuthClient, username: str) -> None:
    with pytest.raises(ClientError) as raised:
        await auth.login(username, "not-the-password-at-all")

    assert raised.value.status == 401
    assert raised.value.problem_type == "urn:keel:problem:unauthorized"
    assert "not-the-password" not in str(raised.value)


async def test_refresh_rotates_and_reuse_ends_the_session(auth: AuthClient, username: str) -> None:
    first = await auth.login(username, PASSWORD)
    assert first.refresh_token is not None

    second = await auth.refresh(first.refresh_token)

    assert second.refresh_token not in (None, first.refresh_token)
    assert (await auth.me(second.access_token)).principal_type == "user"
    with pytest.raises(ClientError) as reused:
        await auth.refresh(first.refresh_token)
    assert reused.value.status == 401
    # Reuse is taken for theft: the rotated-to token dies with the family.
    assert second.refresh_token is not None
    with pytest.raises(ClientError):
        await auth.refresh(second.refresh_token)


async def test_logout_ends_the_session(auth: AuthClient, username: str) -> None:
    tokens = await auth.login(username, PASSWORD)
    assert (await auth.me(tokens.access_token)).principal_type == "user"

    await auth.logout(tokens.access_token)

    with pytest.raises(ClientError) as raised:
        await auth.me(tokens.access_token)
    assert raised.value.status == 401
    assert tokens.refresh_token is not None
    with pytest.raises(ClientError):
        await auth.refresh(tokens.refresh_token)


async def test_100_concurrent_calls_make_one_token_request(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    credentials = keel.credentials(reader, audience=FLEET_AUDIENCE)
    async with OrdersAPI(auth=credentials, transport=fleet.transport) as orders:
        answers = await asyncio.gather(*(orders.orders() for _ in range(100)))

    assert [answer["subject"] for answer in answers] == [reader.account_id] * 100
    assert fleet.transport.count(TOKEN_PATH) == 1
    assert credentials.token_requests == 1
    assert len({jti for _, _, jti in fleet.served}) == 1


async def test_token_is_refreshed_before_it_expires(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    now = [time.monotonic()]
    credentials = keel.credentials(
        reader, audience=FLEET_AUDIENCE, refresh_margin=10, clock=lambda: now[0]
    )
    async with OrdersAPI(auth=credentials, transport=fleet.transport) as orders:
        await orders.orders()
        now[0] += 19  # 11 s of the 30 s lifetime left: more than the margin
        await orders.orders()
        assert fleet.transport.count(TOKEN_PATH) == 1
        now[0] += 2  # 9 s left: inside the margin, so the next call fetches a new token first
        await orders.orders()

    assert fleet.transport.count(TOKEN_PATH) == 2
    first_jti, second_jti = fleet.served[0][2], fleet.served[2][2]
    assert fleet.served[1][2] == first_jti
    assert second_jti != first_jti


async def test_token_method_is_single_flight_and_reuses_the_token(
    keel: Keel, reader: Client
) -> None:
    credentials = keel.credentials(reader, audience=FLEET_AUDIENCE, scope="orders:order:read")
    try:
        tokens = await asyncio.gather(*(credentials.token() for _ in range(50)))
        again = await credentials.token()
    finally:
        await credentials.aclose()

    assert len(set(tokens)) == 1
    assert again == tokens[0]
    assert credentials.token_requests == 1
    claims = jwt.decode(tokens[0], options={"verify_signature": False})
    assert claims["aud"] == FLEET_AUDIENCE
    assert claims["sub"] == reader.account_id
    assert claims["permissions"] == ["orders:order:read"]


async def test_wrong_client_secret_raises_a_401_client_error(keel: Keel, reader: Client) -> None:
    credentials = ServiceCredentials(
        keel.base_url, client_id=reader.client_id, client_secret="kcs_wrong"
    )
    with pytest.raises(ClientError) as raised:
        await credentials.token()
    await credentials.aclose()

    assert raised.value.status == 401
    assert "kcs_wrong" not in str(raised.value)

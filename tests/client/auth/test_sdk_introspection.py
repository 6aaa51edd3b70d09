"""API keys by cached introspection, the combined ``Authenticator``, and the public names."""

from __future__ import annotations

import asyncio

import pytest

import keel_client.auth
import keel_client.fastapi
from keel_client.auth import Authenticator, InvalidToken, TokenIntrospector
from keel_client.http import BearerToken, ClientError
from tests.client.auth.fleet_support import FLEET_AUDIENCE, Client, Fleet, Keel, fleet_token

INTROSPECT_PATH = "/auth/v1/oauth/introspect"


def _api_key(keel: Keel, client: Client) -> tuple[str, str]:
    return keel.create_api_key(client.account_id, "service_account")


async def test_api_key_is_accepted_and_the_answer_cached(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    _, api_key = _api_key(keel, reader)

    first = await fleet.get("/orders", api_key)
    second = await fleet.get("/orders", api_key)

    assert first.status_code == 200, first.text
    assert first.json() == second.json()
    assert first.json()["credential"] == "api_key"
    assert first.json()["subject"] == reader.account_id
    assert fleet.transport.count(INTROSPECT_PATH) == 1, "the second call made no HTTP request"


async def test_concurrent_first_uses_share_one_introspection(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    _, api_key = _api_key(keel, reader)

    answers = await asyncio.gather(*(fleet.get("/orders", api_key) for _ in range(20)))

    assert {answer.status_code for answer in answers} == {200}
    assert fleet.transport.count(INTROSPECT_PATH) == 1


async def test_revoked_api_key_is_refused_once_the_cache_entry_expires(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    key_id, api_key = _api_key(keel, reader)
    assert (await fleet.get("/orders", api_key)).status_code == 200

    keel.revoke_api_key(key_id)
    # Within the cache TTL (30 s here) the cached answer stands: the documented bound.
    assert (await fleet.get("/orders", api_key)).status_code == 200
    fleet.cache_clock_skew[0] = 31
    refused = await fleet.get("/orders", api_key)

    assert refused.status_code == 401
    assert refused.json()["code"] == "inactive"
    assert fleet.transport.count(INTROSPECT_PATH) == 2


async def test_unknown_api_key_is_refused_and_the_refusal_cached_briefly(fleet: Fleet) -> None:
    unknown = "keel_" + "A" * 46

    refusals = [await fleet.get("/orders", unknown) for _ in range(3)]
    assert fleet.transport.count(INTROSPECT_PATH) == 1
    fleet.cache_clock_skew[0] = 6  # past the 5-second negative TTL
    refusals.append(await fleet.get("/orders", unknown))

    assert [refusal.status_code for refusal in refusals] == [401] * 4
    assert fleet.transport.count(INTROSPECT_PATH) == 2


async def test_api_key_without_the_permission_gets_403(
    keel: Keel, outsider: Client, fleet: Fleet
) -> None:
    _, api_key = _api_key(keel, outsider)

    response = await fleet.get("/orders", api_key)

    assert response.status_code == 403
    assert response.json()["type"] == "urn:keel:problem:forbidden"


async def test_cache_is_bounded(keel: Keel, reader: Client) -> None:
    keys = [_api_key(keel, reader)[1] for _ in range(3)]
    introspector = TokenIntrospector(
        keel.base_url, auth=keel.credentials(reader).client_authentication(), cache_size=2
    )
    async with introspector:
        for key in keys:
            await introspector.introspect(key)
        await introspector.introspect(keys[2])  # still cached
        assert introspector.requests == 3
        await introspector.introspect(keys[0])  # evicted by the third

    assert introspector.requests == 4


async def test_introspection_needs_a_client_or_the_introspect_permission(
    keel: Keel, reader: Client
) -> None:
    _, api_key = _api_key(keel, reader)
    bearer_without_permission = TokenIntrospector(keel.base_url, auth=keel.credentials(reader))
    admin_bearer = TokenIntrospector(keel.base_url, auth=BearerToken(keel.admin_key))

    async with bearer_without_permission, admin_bearer:
        with pytest.raises(ClientError) as refused:
            await bearer_without_permission.introspect(api_key)
        principal = await admin_bearer.introspect(api_key)

    assert refused.value.status == 401
    assert principal.subject == reader.account_id
    assert principal.credential == "api_key"


async def test_authenticator_routes_api_keys_to_introspection_and_jwts_to_the_verifier(
    keel: Keel, reader: Client
) -> None:
    _, api_key = _api_key(keel, reader)
    token = await fleet_token(keel, reader)
    credentials = keel.credentials(reader)
    authenticator = Authenticator.from_url(
        keel.base_url,
        audience=FLEET_AUDIENCE,
        introspection_auth=credentials.client_authentication(),
    )
    try:
        by_jwt = await authenticator.authenticate(token)
        by_key = await authenticator.authenticate(api_key)
        with pytest.raises(InvalidToken) as inactive:
            await authenticator.authenticate("keel_" + "B" * 46)
        with pytest.raises(InvalidToken) as malformed:
            await authenticator.authenticate("not-a-token")
    finally:
        await authenticator.aclose()

    assert (by_jwt.credential, by_jwt.subject) == ("jwt", reader.account_id)
    assert (by_key.credential, by_key.subject) == ("api_key", reader.account_id)
    assert by_key.permissions == by_jwt.permissions == {"orders:order:read"}
    assert inactive.value.code == "inactive"
    assert malformed.value.code == "malformed"
    assert authenticator.introspector is not None
    assert authenticator.introspector.requests == 2


def test_public_names_are_exactly_the_intended_ones() -> None:
    assert set(keel_client.auth.__all__) == {
        "API_KEY_PREFIX",
        "DEFAULT_ALGORITHMS",
        "AuthClient",
        "Authenticator",
        "InvalidToken",
        "Principal",
        "ServiceCredentials",
        "TokenIntrospector",
        "TokenSet",
        "TokenVerifier",
        "has_permission",
        "is_valid_permission",
        "narrow_permissions",
        "permission_matches",
    }
    assert set(keel_client.fastapi.__all__) == {
        "PRINCIPAL_SCOPE_KEY",
        "AuthProblem",
        "CurrentPrincipal",
        "KeelAuth",
        "KeelAuthMiddleware",
        "require_auth",
        "require_permission",
        "require_role",
        "use_keel_edge",
    }

"""``keel_client.fastapi`` protecting a fleet service, against a real ``keel serve``."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import jwt
import pytest

from keel_client.auth import TokenVerifier
from keel_client.fastapi import KeelAuth
from tests.client.auth.fleet_support import (
    ACCESS_TOKEN_TTL,
    FLEET_URL,
    Client,
    Fleet,
    Keel,
    fleet_app,
    fleet_token,
)
from tests.support.keel_process import free_port

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def order_admin(keel: Keel) -> Client:
    """A service account with the role named ``orders-admin``."""
    keel.create_role(["orders:*"], name="orders-admin")
    return keel.create_service_account(["orders-admin"])


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == f"urn:keel:problem:{slug}"
    assert body["status"] == status
    return body


async def test_valid_token_with_the_permission_is_served(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    token = await fleet_token(keel, reader)

    response = await fleet.get("/orders", token)

    assert response.status_code == 200, response.text
    assert response.json()["subject"] == reader.account_id
    assert response.json()["credential"] == "jwt"
    assert fleet.served == [
        (
            "/orders",
            reader.account_id,
            jwt.decode(token, options={"verify_signature": False})["jti"],
        )
    ]


async def test_missing_credential_is_401_problem_with_a_bearer_challenge(fleet: Fleet) -> None:
    response = await fleet.get("/orders", None)

    body = _assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="keel"'
    assert "code" not in body
    assert fleet.served == []


async def test_malformed_authorization_header_is_refused(fleet: Fleet) -> None:
    response = await fleet.http.get("/orders", headers={"Authorization": "Basic dXNlcjpwYXNz"})

    _assert_problem(response, 401, "unauthorized")


async def test_expired_token_is_refused(keel: Keel, reader: Client, fleet: Fleet) -> None:
    token = await fleet_token(keel, reader)
    assert (await fleet.get("/orders", token)).status_code == 200

    # The verifier's clock moves past exp plus the 10-second leeway.
    fleet.clock_skew[0] = ACCESS_TOKEN_TTL + 11
    response = await fleet.get("/orders", token)

    body = _assert_problem(response, 401, "unauthorized")
    assert body["code"] == "expired"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert token not in response.text


async def test_tampered_token_is_refused(
    keel: Keel, reader: Client, outsider: Client, fleet: Fleet
) -> None:
    token = await fleet_token(keel, reader)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["permissions"] = ["*"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    response = await fleet.get("/orders", f"{header}.{forged_payload}.{signature}")

    assert _assert_problem(response, 401, "unauthorized")["code"] == "bad_signature"
    assert fleet.served == []


async def test_token_for_another_audience_is_refused(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    token = await fleet_token(keel, reader, audience="billing")

    response = await fleet.get("/orders", token)

    assert _assert_problem(response, 401, "unauthorized")["code"] == "bad_audience"


async def test_caller_without_the_permission_gets_403(
    keel: Keel, outsider: Client, fleet: Fleet
) -> None:
    token = await fleet_token(keel, outsider)

    response = await fleet.get("/orders", token)

    body = _assert_problem(response, 403, "forbidden")
    assert "orders:order:read" in str(body["detail"])
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert fleet.served == []


async def test_require_role_admits_only_holders_of_the_role(
    keel: Keel, reader: Client, order_admin: Client, fleet: Fleet
) -> None:
    refused = await fleet.http.delete(
        "/orders/42", headers={"Authorization": f"Bearer {await fleet_token(keel, reader)}"}
    )
    admitted = await fleet.http.delete(
        "/orders/42", headers={"Authorization": f"Bearer {await fleet_token(keel, order_admin)}"}
    )

    assert "orders-admin" in str(_assert_problem(refused, 403, "forbidden")["detail"])
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["roles"] == ["orders-admin"]


async def test_public_paths_need_no_credential(fleet: Fleet) -> None:
    response = await fleet.get("/health/live", None)

    assert response.status_code == 200
    assert response.json() == {"status": "pass"}


async def test_middleware_authenticates_routes_without_a_dependency(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    refused = await fleet.get("/whoami", None)
    served = await fleet.get("/whoami", await fleet_token(keel, reader))

    _assert_problem(refused, 401, "unauthorized")
    assert served.status_code == 200
    assert served.json()["subject"] == reader.account_id


async def test_dependencies_authenticate_on_their_own_without_the_middleware(
    keel: Keel, reader: Client, outsider: Client
) -> None:
    app = fleet_app([])
    verifier = TokenVerifier.from_url(keel.base_url, audience="orders")
    KeelAuth(verifier).install(app, middleware=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=FLEET_URL) as http:
        served = await http.get(
            "/orders", headers={"Authorization": f"Bearer {await fleet_token(keel, reader)}"}
        )
        refused = await http.get("/orders")
        forbidden = await http.get(
            "/orders", headers={"Authorization": f"Bearer {await fleet_token(keel, outsider)}"}
        )

    assert served.status_code == 200, served.text
    _assert_problem(refused, 401, "unauthorized")
    _assert_problem(forbidden, 403, "forbidden")


async def test_keel_unreachable_answers_503_not_401(keel: Keel, reader: Client) -> None:
    token = await fleet_token(keel, reader)
    app = fleet_app([])
    unreachable = f"http://127.0.0.1:{free_port()}"
    KeelAuth(TokenVerifier.from_url(unreachable, issuer=keel.base_url, audience="orders")).install(
        app
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=FLEET_URL
    ) as http:
        response = await http.get("/orders", headers={"Authorization": f"Bearer {token}"})

    assert _assert_problem(response, 503, "unavailable")["code"] == "auth_unavailable"


async def test_api_keys_are_refused_when_no_introspector_is_configured(
    keel: Keel, reader: Client
) -> None:
    _, api_key = keel.create_api_key(reader.account_id, "service_account")
    app = fleet_app([])
    KeelAuth(TokenVerifier.from_url(keel.base_url, audience="orders")).install(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=FLEET_URL
    ) as http:
        response = await http.get("/orders", headers={"Authorization": f"Bearer {api_key}"})

    assert _assert_problem(response, 401, "unauthorized")["code"] == "api_key_not_accepted"


async def test_signing_key_rotation_under_load_fails_no_request(
    keel: Keel, reader: Client, fleet: Fleet
) -> None:
    """Tokens of the retired key keep verifying; tokens of a key the verifier has never seen
    make it refetch JWKS once (however many requests meet that key at once)."""
    tokens = [await fleet_token(keel, reader)]
    assert (await fleet.get("/orders", tokens[0])).status_code == 200  # first JWKS fetch
    assert len(fleet.jwks_fetches) == 1
    outcomes: list[tuple[str, int]] = []
    kids: dict[str, str] = {}
    stop = asyncio.Event()
    #: Set once ``wanted[0]`` requests were answered.
    wanted, enough = [float("inf")], asyncio.Event()

    async def caller(offset: int) -> None:
        sent = offset
        while not stop.is_set():
            token = tokens[sent % len(tokens)]  # old and new tokens alike
            response = await fleet.get("/orders", token)
            outcomes.append(
                (
                    kids.setdefault(token, jwt.get_unverified_header(token)["kid"]),
                    response.status_code,
                )
            )
            sent += 1
            # In-process ASGI with a cached verification never suspends: let others run.
            await asyncio.sleep(0)
            if len(outcomes) >= wanted[0]:
                enough.set()

    callers = [asyncio.create_task(caller(offset)) for offset in range(16)]
    admin = httpx.AsyncClient(
        base_url=keel.base_url, headers={"Authorization": f"Bearer {keel.admin_key}"}, timeout=30
    )
    try:
        for _ in range(2):
            await asyncio.sleep(0.3)
            rotated = await admin.post("/auth/v1/signing-keys/rotate")
            assert rotated.status_code == 200, rotated.text
            tokens.append(await fleet_token(keel, reader))
        # The second rotation's key was published after the verifier's fetch; its first token
        # must find the refetch allowed (the fixture's verifier refetches at most once a second).
        await asyncio.sleep(max(0.0, fleet.jwks_fetches[-1] + 1.05 - time.monotonic()))
        wanted[0] = len(outcomes) + 200
        await asyncio.wait_for(enough.wait(), timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await admin.aclose()

    token_kids = [jwt.get_unverified_header(token)["kid"] for token in tokens]
    assert len(set(token_kids)) == 3, "each rotation made a new key sign"
    assert [status for _, status in outcomes if status != 200] == []
    assert {kid for kid, _ in outcomes} == set(token_kids)
    assert len(fleet.jwks_fetches) == 2, "one refetch for the never-seen key, not one per request"
    # The oldest token still verifies after both rotations, until it expires.
    assert (await fleet.get("/orders", tokens[0])).status_code == 200
    fleet.clock_skew[0] = ACCESS_TOKEN_TTL + 11
    assert (await fleet.get("/orders", tokens[0])).json()["code"] == "expired"

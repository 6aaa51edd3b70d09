"""Refresh-token rotation with reuse detection, logout and the sessions of a user."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from tests.support.logins import login_tokens
from tests.support.tenants import TenantAdmin, bearer, create_user


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/auth/v1/refresh", json={"refresh_token": refresh_token})


async def _me_status(client: httpx.AsyncClient, access_token: str) -> int:
    return (await client.get("/auth/v1/me", headers=bearer(access_token))).status_code


async def test_refresh_rotates_and_old_token_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    first = await login_tokens(client, admin.tenant_slug, "alice")

    rotated = await _refresh(client, first["refresh_token"])

    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await _me_status(client, second["access_token"]) == 200
    assert (await _refresh(client, first["refresh_token"])).status_code == 401


async def test_reused_refresh_token_revokes_family(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    first = await login_tokens(client, admin.tenant_slug, "alice")
    second = (await _refresh(client, first["refresh_token"])).json()
    other_session = await login_tokens(client, admin.tenant_slug, "alice")

    reuse = await _refresh(client, first["refresh_token"])

    assert reuse.status_code == 401
    assert reuse.headers["content-type"] == "application/problem+json"
    # The whole family ends: the token the rotation issued and the session's access tokens.
    assert (await _refresh(client, second["refresh_token"])).status_code == 401
    assert await _me_status(client, second["access_token"]) == 401
    assert await _me_status(client, first["access_token"]) == 401
    # Another login of the same user is not part of the family.
    assert await _me_status(client, other_session["access_token"]) == 200
    assert (await _refresh(client, other_session["refresh_token"])).status_code == 200


async def test_logout_ends_the_session(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    response = await client.post("/auth/v1/logout", headers=bearer(tokens["access_token"]))

    assert response.status_code == 204
    assert await _me_status(client, tokens["access_token"]) == 401
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 401


async def test_logout_with_an_api_key_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    response = await client.post("/auth/v1/logout", headers=admin.headers)
    assert response.status_code == 422
    assert await _me_status(client, admin.api_key) == 200


async def test_sessions_are_listed_and_revoked_one_or_all(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    await create_user(app, admin.tenant_id, "bob")
    first = await login_tokens(client, admin.tenant_slug, "alice")
    second = await login_tokens(client, admin.tenant_slug, "alice")
    third = await login_tokens(client, admin.tenant_slug, "alice")
    bobs = await login_tokens(client, admin.tenant_slug, "bob")

    listed = await client.get("/auth/v1/sessions", headers=bearer(first["access_token"]))
    assert listed.status_code == 200
    sessions = listed.json()
    assert len(sessions) == 3
    assert all(s["ip_address"] == "127.0.0.1" for s in sessions)

    target = sessions[-1]["id"]  # newest first: the last one is the first login's
    revoked = await client.delete(
        f"/auth/v1/sessions/{target}", headers=bearer(second["access_token"])
    )
    assert revoked.status_code == 204
    assert await _me_status(client, first["access_token"]) == 401
    assert await _me_status(client, second["access_token"]) == 200
    remaining = await client.get("/auth/v1/sessions", headers=bearer(second["access_token"]))
    assert target not in {s["id"] for s in remaining.json()}
    assert len(remaining.json()) == 2

    # Another user's session cannot be named.
    bobs_sessions = (
        await client.get("/auth/v1/sessions", headers=bearer(bobs["access_token"]))
    ).json()
    foreign = await client.delete(
        f"/auth/v1/sessions/{bobs_sessions[0]['id']}", headers=bearer(second["access_token"])
    )
    assert foreign.status_code == 404
    assert await _me_status(client, bobs["access_token"]) == 200

    revoked_all = await client.delete("/auth/v1/sessions", headers=bearer(third["access_token"]))
    assert revoked_all.status_code == 204
    assert await _me_status(client, second["access_token"]) == 401
    assert await _me_status(client, third["access_token"]) == 401
    assert (await _refresh(client, third["refresh_token"])).status_code == 401
    assert await _me_status(client, bobs["access_token"]) == 200


async def test_concurrent_refreshes_with_one_token_spend_it_once(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    first, second = await asyncio.gather(
        _refresh(client, tokens["refresh_token"]), _refresh(client, tokens["refresh_token"])
    )

    # One spends the token; the other is the reuse it is, and ends the family.
    assert sorted([first.status_code, second.status_code]) == [200, 401]
    winner = first if first.status_code == 200 else second
    assert (await _refresh(client, winner.json()["refresh_token"])).status_code == 401

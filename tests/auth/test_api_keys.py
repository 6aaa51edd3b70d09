"""API keys: format and checksum, keyed hash at rest, scopes, expiry, revocation, last use."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.auth.models import ApiKey
from keel.auth.service import API_KEYS
from keel.auth.service.credentials import API_KEY_PREFIX, parse_api_key
from keel.core.cache import invalidate_after_commit
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.logins import login_tokens
from tests.support.tenants import (
    TenantAdmin,
    auth_service,
    bearer,
    create_api_key,
    create_role,
    create_user,
)

KEY_FORMAT = re.compile(r"keel_[0-9A-Za-z]{46}")


async def _me(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get("/auth/v1/me", headers=bearer(key))


async def _key_row(app: FastAPI, tenant_id: str, key_id: str) -> ApiKey:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    assert row is not None
    return row


async def _update_key(app: FastAPI, tenant_id: str, key_id: str, **values: Any) -> None:
    """Change the row behind the service's back (no API changes these fields), so drop what
    the process keeps of it, as a change through the service would."""
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        invalidate_after_commit(session, API_KEYS, row.lookup)


async def test_a_cached_key_is_refused_once_revoked_or_its_role_is_gone(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Keys are verified from a cache after their first use: changes must still land at once."""
    await create_role(app, admin.tenant_id, "viewer", ["auth:user:read"])
    user = await create_user(app, admin.tenant_id, "bob", roles=["viewer"])
    key_id, key = await create_api_key(app, admin.tenant_id, user.id)
    first = await _me(client, key)
    assert first.json()["permissions"] == ["auth:user:read"]
    assert (await _me(client, key)).status_code == 200  # served from the cache

    unassigned = await client.delete(
        f"/auth/v1/roles/viewer/assignments/user/{user.id}", headers=admin.headers
    )
    assert unassigned.status_code == 204, unassigned.text
    assert (await _me(client, key)).json()["permissions"] == []

    revoked = await client.delete(f"/auth/v1/api-keys/{key_id}", headers=admin.headers)
    assert revoked.status_code == 204
    assert (await _me(client, key)).status_code == 401


async def test_api_key_format_and_checksum(client: httpx.AsyncClient, admin: TenantAdmin) -> None:
    key = admin.api_key
    assert KEY_FORMAT.fullmatch(key)
    assert (await _me(client, key)).status_code == 200

    body_index = len(API_KEY_PREFIX) + 20
    replacement = "a" if key[body_index] != "a" else "b"
    mutated = key[:body_index] + replacement + key[body_index + 1 :]
    # The checksum refuses it before any lookup could happen.
    assert parse_api_key(mutated) is None
    assert parse_api_key(key) is not None
    assert (await _me(client, mutated)).status_code == 401
    assert (await _me(client, key[:-1])).status_code == 401


async def test_only_a_keyed_hash_of_the_key_is_stored(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    created = await client.post("/auth/v1/api-keys", headers=admin.headers, json={"name": "ci"})
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    key = body["key"]
    row = await _key_row(app, admin.tenant_id, body["id"])

    stored = " ".join(str(getattr(row, column.key)) for column in ApiKey.__table__.columns)
    assert key not in stored
    assert key[len(API_KEY_PREFIX) :] not in stored
    assert row.secret_hash == auth_service(app).keyring.token_hash(key)
    assert row.secret_hash != hashlib.sha256(key.encode()).hexdigest()  # keyed, not plain
    listed = await client.get("/auth/v1/api-keys", headers=admin.headers)
    assert key not in listed.text
    assert body["id"] in listed.text


async def test_scopes_limit_the_keys_permissions(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    created = await client.post(
        "/auth/v1/api-keys",
        headers=admin.headers,
        json={"name": "reader", "scopes": ["auth:user:read"]},
    )
    key = created.json()["key"]

    me = await _me(client, key)
    assert me.json()["permissions"] == ["auth:user:read"]
    assert me.json()["credential"] == "api_key"
    assert (await client.get("/auth/v1/users", headers=bearer(key))).status_code == 200
    assert (await client.get("/auth/v1/roles", headers=bearer(key))).status_code == 403
    assert (
        await client.post("/auth/v1/api-keys", headers=bearer(key), json={"name": "escalate"})
    ).status_code == 403


async def test_wildcard_scope_keeps_the_narrower_permissions_it_covers(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_role(app, admin.tenant_id, "reader", ["auth:user:read", "flags:flag:read"])
    user = await create_user(app, admin.tenant_id, "alice", roles=["reader"])
    _, key = await create_api_key(app, admin.tenant_id, user.id, scopes=["auth:*"])

    me = await _me(client, key)

    assert me.json()["permissions"] == ["auth:user:read"]


async def test_expired_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key_id, key = await create_api_key(
        app, admin.tenant_id, admin.user_id, expires_at=utcnow() + timedelta(days=1)
    )
    assert (await _me(client, key)).status_code == 200

    await _update_key(app, admin.tenant_id, key_id, expires_at=utcnow() - timedelta(seconds=1))

    assert (await _me(client, key)).status_code == 401
    past = await client.post(
        "/auth/v1/api-keys",
        headers=admin.headers,
        json={"name": "late", "expires_at": "2000-01-01T00:00:00Z"},
    )
    assert past.status_code == 422


@pytest.mark.parametrize(
    ("expires_at", "fragment"),
    [
        # Found by tests/test_fuzz.py: each was a 500 (a naive time compared with an aware
        # one; a time with no UTC equivalent when it was stored).
        ("2999-01-01T00:00:00", "offset"),
        ("9999-12-31T23:59:59-01:00", "out of range"),
    ],
)
async def test_an_expiry_without_offset_or_utc_equivalent_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin, expires_at: str, fragment: str
) -> None:
    response = await client.post(
        "/auth/v1/api-keys", headers=admin.headers, json={"name": "k", "expires_at": expires_at}
    )
    assert response.status_code == 422, response.text
    assert fragment in response.text


async def test_revoked_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key_id, key = await create_api_key(app, admin.tenant_id, admin.user_id)
    assert (await _me(client, key)).status_code == 200

    revoked = await client.delete(f"/auth/v1/api-keys/{key_id}", headers=admin.headers)

    assert revoked.status_code == 204
    assert (await _me(client, key)).status_code == 401
    assert (await _key_row(app, admin.tenant_id, key_id)).revoked_at is not None


async def test_a_key_in_use_is_read_again_before_its_cache_entry_expires(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Refresh ahead: a hit in the second half of the entry's life reads the key again in
    the background, so a key in use never has a request wait on its read. That read keeps
    the TTL's promise: a key revoked behind the cache's back (its invalidation lost) is
    forgotten by it, and is never served for longer than the TTL after it was read."""
    key_id, key = await create_api_key(app, admin.tenant_id, admin.user_id)
    assert (await _me(client, key)).status_code == 200
    cached_at = time.monotonic()
    lookup = (await _key_row(app, admin.tenant_id, key_id)).lookup
    await asyncio.sleep(API_KEYS.ttl / 2 + 0.05)
    assert (await _me(client, key)).status_code == 200  # a hit; it asks for the read
    await auth_service(app).api_keys.aclose()
    await asyncio.sleep(API_KEYS.ttl / 2)
    assert time.monotonic() - cached_at > API_KEYS.ttl
    assert API_KEYS.get(lookup) is not None, "the entry was not read again before it expired"

    # Revoked with no invalidation: the next refresh forgets the key, before its expiry.
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        assert row is not None
        row.revoked_at = utcnow()
    deadline = time.monotonic() + API_KEYS.ttl
    while API_KEYS.get(lookup) is not None:
        assert time.monotonic() < deadline, "a revoked key was served past the TTL"
        await _me(client, key)
        await asyncio.sleep(0.05)
    assert (await _me(client, key)).status_code == 401


async def test_last_used_at_is_written_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key_id, key = await create_api_key(app, admin.tenant_id, admin.user_id)
    assert (await _key_row(app, admin.tenant_id, key_id)).last_used_at is None

    await _me(client, key)
    first = (await _key_row(app, admin.tenant_id, key_id)).last_used_at
    await _me(client, key)
    second = (await _key_row(app, admin.tenant_id, key_id)).last_used_at
    assert first is not None
    assert second == first

    earlier = utcnow() - timedelta(minutes=2)
    await _update_key(app, admin.tenant_id, key_id, last_used_at=earlier)
    await _me(client, key)
    third = (await _key_row(app, admin.tenant_id, key_id)).last_used_at
    assert third is not None
    assert third > earlier + timedelta(minutes=1)


async def test_key_of_a_disabled_user_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    user = await create_user(app, admin.tenant_id, "alice")
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    assert (await _me(client, key)).status_code == 200

    disabled = await client.patch(
        f"/auth/v1/users/{user.id}", headers=admin.headers, json={"status": "disabled"}
    )

    assert disabled.status_code == 200
    assert (await _me(client, key)).status_code == 401


async def test_key_for_another_principal_needs_the_permissions_it_would_grant(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_role(app, admin.tenant_id, "key-maker", ["auth:api_key:create"])
    maker = await create_user(app, admin.tenant_id, "alice", roles=["key-maker"])
    plain = await create_user(app, admin.tenant_id, "bob")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")
    h = bearer(tokens["access_token"])

    for_admin = await client.post(
        "/auth/v1/api-keys",
        headers=h,
        json={"name": "mine now", "principal_type": "user", "principal_id": admin.user_id},
    )
    for_self = await client.post("/auth/v1/api-keys", headers=h, json={"name": "mine"})
    for_lesser = await client.post(
        "/auth/v1/api-keys",
        headers=h,
        json={"name": "bob's", "principal_type": "user", "principal_id": plain.id},
    )

    # A key for the admin would be the admin's every permission: an escalation.
    assert for_admin.status_code == 403
    assert "key" not in for_admin.json()
    assert for_self.status_code == 201
    assert for_self.json()["principal_id"] == maker.id
    assert for_lesser.status_code == 201

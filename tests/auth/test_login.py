"""Logging in: tokens on success, one indistinguishable answer for every failure, lockout,
the per-address rate limit and the audit trail."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from keel.auth.models import User
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.settings import Settings
from tests.support.apps import running, unit_of_work, with_auth
from tests.support.audit import audit_events
from tests.support.logins import login
from tests.support.tenants import (
    OTHER_PASSWORD,
    PASSWORD,
    TenantAdmin,
    auth_service,
    bearer,
    create_user,
    make_tenant_admin,
)


async def _user_row(app: FastAPI, tenant_id: str, username: str) -> User:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        user = await session.scalar(select(User).where(User.username == username))
    assert user is not None
    return user


async def _set_locked_until(app: FastAPI, tenant_id: str, username: str, value: Any) -> None:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        user = await session.scalar(select(User).where(User.username == username))
        assert user is not None
        user.locked_until = value


def _comparable(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    body.pop("request_id", None)
    body.pop("instance", None)
    return body


async def test_login_answers_access_and_refresh_token_not_to_be_cached(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice", email="alice@example.com")

    for identifier in ("alice", "alice@example.com"):
        response = await login(client, admin.tenant_slug, identifier)

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 900
        assert body["refresh_token"].startswith("krt_")
        me = await client.get("/auth/v1/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json()["tenant_id"] == admin.tenant_id


async def test_every_login_failure_answers_the_same(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    disabled = await create_user(app, admin.tenant_id, "bob")
    await create_user(app, admin.tenant_id, "carol")
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        await auth.update_user(
            session, admin.tenant_id, disabled.id, if_match=None, changes={"status": "disabled"}
        )
    await _set_locked_until(app, admin.tenant_id, "carol", utcnow() + timedelta(hours=1))

    failures = [
        await login(client, admin.tenant_slug, "nobody"),  # unknown user
        await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD),  # wrong password
        await login(client, admin.tenant_slug, "bob"),  # disabled, right password
        await login(client, admin.tenant_slug, "carol"),  # locked, right password
        await login(client, "no-such-tenant", "alice"),  # unknown tenant
    ]

    first = failures[0]
    assert first.status_code == 401
    assert first.headers["content-type"] == "application/problem+json"
    for response in failures:
        assert response.status_code == first.status_code
        assert _comparable(response) == _comparable(first)
        assert response.headers.get("www-authenticate") == first.headers.get("www-authenticate")


async def test_account_locks_after_threshold_with_growing_delay(settings: Settings) -> None:
    locking = with_auth(settings, lockout_threshold=3, lockout_base_seconds=60)
    async with running(locking) as (app, client):
        admin = await make_tenant_admin(app)
        await create_user(app, admin.tenant_id, "alice")

        for _ in range(2):
            assert (
                await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD)
            ).status_code == 401
        assert (await _user_row(app, admin.tenant_id, "alice")).locked_until is None

        before = utcnow()
        await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD)  # the third failure
        locked_until = (await _user_row(app, admin.tenant_id, "alice")).locked_until
        assert locked_until is not None
        assert timedelta(seconds=55) < locked_until - before < timedelta(seconds=65)

        # Locked: even the right password is refused.
        assert (await login(client, admin.tenant_slug, "alice")).status_code == 401

        # Once the lock ran out, the next failure locks again, twice as long.
        await _set_locked_until(app, admin.tenant_id, "alice", utcnow() - timedelta(seconds=1))
        before = utcnow()
        await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD)
        locked_until = (await _user_row(app, admin.tenant_id, "alice")).locked_until
        assert locked_until is not None
        assert timedelta(seconds=115) < locked_until - before < timedelta(seconds=125)

        # After the lock, the right password works and resets the count.
        await _set_locked_until(app, admin.tenant_id, "alice", utcnow() - timedelta(seconds=1))
        assert (await login(client, admin.tenant_slug, "alice")).status_code == 200
        row = await _user_row(app, admin.tenant_id, "alice")
        assert row.failed_login_count == 0
        assert row.locked_until is None


async def test_login_rate_limit_per_address_answers_429_with_retry_after(
    settings: Settings,
) -> None:
    async with running(with_auth(settings, login_rate_per_ip_per_minute=1)) as (_app, client):
        # Three attempts with a limit of one: at least one is over the limit even if a
        # minute boundary falls between two of them.
        responses = [await login(client, "default", "nobody") for _ in range(3)]

    limited = [r for r in responses if r.status_code == 429]
    assert limited
    response = limited[0]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:keel:problem:rate-limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_login_success_and_failure_are_audited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    user = await create_user(app, admin.tenant_id, "alice")
    assert (await login(client, admin.tenant_slug, "alice", OTHER_PASSWORD)).status_code == 401
    assert (await login(client, admin.tenant_slug, "nobody")).status_code == 401
    # A password typed into the user name field must not land in the audit trail.
    assert (await login(client, admin.tenant_slug, OTHER_PASSWORD)).status_code == 401
    assert (await login(client, admin.tenant_slug, "NoBody ")).status_code == 401
    assert (await login(client, admin.tenant_slug, "alice")).status_code == 200

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.session.login")

    by_outcome = {(event.outcome, event.reason): event for event in events}
    success = by_outcome[("success", None)]
    assert success.actor_id == user.id
    assert success.target_type == "session"
    assert success.ip_address == "127.0.0.1"
    wrong_password = by_outcome[("failure", "bad_password")]
    assert wrong_password.actor_id == user.id
    unknown = [event for event in events if event.reason == "unknown_user"]
    assert len(unknown) == 3
    assert all(event.actor_id is None for event in unknown)
    # A keyed fingerprint, not the name typed: the same name (up to case and spaces) gives
    # the same one, so repeated attempts still show.
    fingerprints = Counter(event.data["identifier_fingerprint"] for event in unknown)
    assert sorted(fingerprints.values()) == [1, 2]
    assert all("nobody" not in str(event.data).lower() for event in events)
    assert all(OTHER_PASSWORD not in str(event.data) for event in events)
    assert all(PASSWORD not in str(event.data) for event in events)

"""Password reset and e-mail verification tokens: delivered through the service's hook, single
use, expiring, and asking for one never tells whether an account exists."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from keel.auth.models import OneTimeToken, OneTimeTokenPurpose
from keel.auth.service.one_time_tokens import AccountTokenMessage, purge_spent_one_time_rows
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.logins import login, login_tokens
from tests.support.tenants import (
    OTHER_PASSWORD,
    PASSWORD,
    TenantAdmin,
    auth_service,
    bearer,
    create_user,
)

NEW_PASSWORD = "saffron-Glacier-lantern-19"


@pytest.fixture
def outbox(app: FastAPI) -> list[AccountTokenMessage]:
    """Every token the service delivers, captured by a hook of the test's own."""
    messages: list[AccountTokenMessage] = []
    auth_service(app).deliver_account_token = messages.append
    return messages


async def _request_reset(client: httpx.AsyncClient, tenant: str, email: str) -> httpx.Response:
    return await client.post("/auth/v1/password-reset", json={"tenant": tenant, "email": email})


async def _confirm_reset(
    client: httpx.AsyncClient, token: str, new_password: str = NEW_PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/v1/password-reset/confirm", json={"token": token, "new_password": new_password}
    )


# -- password reset ---------------------------------------------------------------------------


async def test_password_reset_sets_the_new_password_and_ends_every_session(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    user = await create_user(app, admin.tenant_id, "rita", email="rita@example.com")
    before = await login_tokens(client, admin.tenant_slug, "rita")

    response = await _request_reset(client, admin.tenant_slug, "rita@example.com")
    assert response.status_code == 202
    [message] = outbox
    assert message.purpose == OneTimeTokenPurpose.password_reset
    assert (message.user_id, message.email) == (user.id, "rita@example.com")
    assert timedelta(minutes=59) < message.expires_at - utcnow() <= timedelta(hours=1)
    assert message.token not in repr(message)

    assert (await _confirm_reset(client, message.token)).status_code == 204
    assert (await login(client, admin.tenant_slug, "rita", NEW_PASSWORD)).status_code == 200
    assert (await login(client, admin.tenant_slug, "rita", PASSWORD)).status_code == 401
    refreshed = await client.post(
        "/auth/v1/refresh", json={"refresh_token": before["refresh_token"]}
    )
    assert refreshed.status_code == 401
    me = await client.get("/auth/v1/me", headers=bearer(before["access_token"]))
    assert me.status_code == 401

    events = await audit_events(app, admin.tenant_id, limit=500)
    actions = [event.action for event in events]
    assert "auth.password_reset.request" in actions
    assert "auth.password_reset.confirm" in actions
    assert "auth.user.password_change" in actions
    assert message.token not in repr([(e.data, e.reason, e.target_id) for e in events])


async def test_a_reset_token_works_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "sam", email="sam@example.com")
    await _request_reset(client, admin.tenant_slug, "sam@example.com")
    token = outbox[0].token
    assert (await _confirm_reset(client, token)).status_code == 204
    again = await _confirm_reset(client, token, OTHER_PASSWORD)
    assert again.status_code == 422
    assert again.headers["content-type"] == "application/problem+json"
    assert (await login(client, admin.tenant_slug, "sam", NEW_PASSWORD)).status_code == 200


async def test_an_expired_reset_token_is_refused(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "tia", email="tia@example.com")
    await _request_reset(client, admin.tenant_slug, "tia@example.com")
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        await session.execute(
            update(OneTimeToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await _confirm_reset(client, outbox[0].token)
    assert response.status_code == 422
    assert (await login(client, admin.tenant_slug, "tia", PASSWORD)).status_code == 200


async def test_a_new_reset_token_replaces_the_earlier_one(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "uma", email="uma@example.com")
    await _request_reset(client, admin.tenant_slug, "uma@example.com")
    await _request_reset(client, admin.tenant_slug, "uma@example.com")
    first, second = outbox
    assert first.token != second.token
    assert (await _confirm_reset(client, first.token)).status_code == 422
    assert (await _confirm_reset(client, second.token)).status_code == 204


async def test_the_reset_applies_the_password_policy_and_history_and_keeps_the_token(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "val", email="val@example.com")
    await _request_reset(client, admin.tenant_slug, "val@example.com")
    token = outbox[0].token
    reused = await _confirm_reset(client, token, PASSWORD)
    assert reused.status_code == 422
    short = await _confirm_reset(client, token, "short")
    assert short.status_code == 422
    assert short.json()["rule"] == "password-policy"
    # A refused password does not spend the token.
    assert (await _confirm_reset(client, token)).status_code == 204


async def test_asking_for_a_reset_answers_the_same_whether_or_not_the_account_exists(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "wes", email="wes@example.com")
    disabled = await create_user(app, admin.tenant_id, "xia", email="xia@example.com")
    patched = await client.patch(
        f"/auth/v1/users/{disabled.id}", json={"status": "disabled"}, headers=admin.headers
    )
    assert patched.status_code == 200

    answers = [
        await _request_reset(client, admin.tenant_slug, "wes@example.com"),
        await _request_reset(client, admin.tenant_slug, "nobody@example.com"),
        await _request_reset(client, admin.tenant_slug, "xia@example.com"),
        await _request_reset(client, "no-such-tenant", "wes@example.com"),
    ]
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.text for answer in answers}) == 1
    assert [message.email for message in outbox] == ["wes@example.com"]


async def test_unknown_and_malformed_tokens_are_refused_alike(client: httpx.AsyncClient) -> None:
    unknown = await _confirm_reset(client, "kot_" + "A" * 43)
    malformed = await _confirm_reset(client, "not a token")
    assert unknown.status_code == malformed.status_code == 422
    assert unknown.json()["detail"] == malformed.json()["detail"]
    oversized = await _confirm_reset(client, "kot_" + "A" * 300)
    assert oversized.status_code == 422
    assert oversized.json()["errors"][0]["location"] == ["body", "token"]


async def test_a_failing_delivery_hook_does_not_change_the_answer(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "yan", email="yan@example.com")

    def broken(message: AccountTokenMessage) -> None:
        raise RuntimeError("mail server down")

    auth_service(app).deliver_account_token = broken
    response = await _request_reset(client, admin.tenant_slug, "yan@example.com")
    assert response.status_code == 202


async def test_an_async_delivery_hook_is_awaited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "zed", email="zed@example.com")
    delivered: list[str] = []

    async def send(message: AccountTokenMessage) -> None:
        delivered.append(message.token)

    auth_service(app).deliver_account_token = send
    await _request_reset(client, admin.tenant_slug, "zed@example.com")
    assert len(delivered) == 1
    assert (await _confirm_reset(client, delivered[0])).status_code == 204


# -- e-mail verification ----------------------------------------------------------------------


async def test_a_user_verifies_their_own_address(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    user = await create_user(app, admin.tenant_id, "abe", email="abe@example.com")
    tokens = await login_tokens(client, admin.tenant_slug, "abe")
    response = await client.post(
        f"/auth/v1/users/{user.id}/verify-email", headers=bearer(tokens["access_token"])
    )
    assert response.status_code == 202
    [message] = outbox
    assert message.purpose == OneTimeTokenPurpose.email_verification
    assert timedelta(hours=47) < message.expires_at - utcnow() <= timedelta(hours=48)

    confirmed = await client.post("/auth/v1/verify-email/confirm", json={"token": message.token})
    assert confirmed.status_code == 204
    shown = await client.get(f"/auth/v1/users/{user.id}", headers=admin.headers)
    assert shown.json()["is_email_verified"] is True
    again = await client.post("/auth/v1/verify-email/confirm", json={"token": message.token})
    assert again.status_code == 422
    asked_again = await client.post(
        f"/auth/v1/users/{user.id}/verify-email", headers=bearer(tokens["access_token"])
    )
    assert asked_again.status_code == 409


async def test_only_the_user_or_an_admin_may_send_a_verification(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    target = await create_user(app, admin.tenant_id, "bea", email="bea@example.com")
    await create_user(app, admin.tenant_id, "cal", email="cal@example.com")
    other = await login_tokens(client, admin.tenant_slug, "cal")
    refused = await client.post(
        f"/auth/v1/users/{target.id}/verify-email", headers=bearer(other["access_token"])
    )
    assert refused.status_code == 403
    allowed = await client.post(f"/auth/v1/users/{target.id}/verify-email", headers=admin.headers)
    assert allowed.status_code == 202
    assert [message.user_id for message in outbox] == [target.id]


async def test_a_verification_token_does_not_vouch_for_a_changed_address(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    user = await create_user(app, admin.tenant_id, "dan", email="dan@example.com")
    await client.post(f"/auth/v1/users/{user.id}/verify-email", headers=admin.headers)
    changed = await client.patch(
        f"/auth/v1/users/{user.id}", json={"email": "dan@elsewhere.example"}, headers=admin.headers
    )
    assert changed.status_code == 200
    response = await client.post("/auth/v1/verify-email/confirm", json={"token": outbox[0].token})
    assert response.status_code == 422
    shown = await client.get(f"/auth/v1/users/{user.id}", headers=admin.headers)
    assert shown.json()["is_email_verified"] is False


async def test_a_verification_token_is_not_a_reset_token(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    user = await create_user(app, admin.tenant_id, "eve", email="eve@example.com")
    await client.post(f"/auth/v1/users/{user.id}/verify-email", headers=admin.headers)
    response = await _confirm_reset(client, outbox[0].token)
    assert response.status_code == 422
    assert (await login(client, admin.tenant_slug, "eve", PASSWORD)).status_code == 200


async def test_tokens_are_stored_only_as_keyed_hashes(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "flo", email="flo@example.com")
    await _request_reset(client, admin.tenant_slug, "flo@example.com")
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(select(OneTimeToken))
    assert row is not None
    token = outbox[0].token
    assert token not in repr(vars(row))
    assert row.token_hash == auth_service(app).keyring.token_hash(token)


async def test_tokens_expired_over_a_week_ago_are_purged(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    outbox: list[AccountTokenMessage],
) -> None:
    await create_user(app, admin.tenant_id, "gil", email="gil@example.com")
    await create_user(app, admin.tenant_id, "hui", email="hui@example.com")
    await _request_reset(client, admin.tenant_slug, "gil@example.com")
    await _request_reset(client, admin.tenant_slug, "hui@example.com")
    old, recent = outbox
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        await session.execute(
            update(OneTimeToken)
            .where(OneTimeToken.user_id == old.user_id)
            .values(expires_at=utcnow() - timedelta(days=8))
        )
    async with unit_of_work(app) as session:
        await purge_spent_one_time_rows(session)
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        left = list(await session.scalars(select(OneTimeToken.user_id)))
    assert left == [recent.user_id]

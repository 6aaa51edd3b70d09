"""Who made a change: every audited change through the auth API names its caller with the
request's address and user agent (the ``CallerActor`` dependency), not the principal alone."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from keel.audit.service import StoredEvent
from tests.support.audit import audit_events
from tests.support.tenants import PASSWORD, TenantAdmin

USER_AGENT = "keel-admin-console/2.3 (audit test)"


async def test_user_role_and_api_key_changes_record_the_callers_address_and_user_agent(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = {**admin.headers, "User-Agent": USER_AGENT}
    created = await client.post(
        "/auth/v1/users", json={"username": "casey", "password": PASSWORD}, headers=headers
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    role = await client.post(
        "/auth/v1/roles",
        json={"name": "user-readers", "permissions": ["auth:user:read"]},
        headers=headers,
    )
    assert role.status_code == 201, role.text
    assigned = await client.post(
        "/auth/v1/roles/user-readers/assignments",
        json={"principal_type": "user", "principal_id": user_id},
        headers=headers,
    )
    assert assigned.status_code == 204, assigned.text
    key = await client.post(
        "/auth/v1/api-keys",
        json={"name": "casey's key", "principal_type": "user", "principal_id": user_id},
        headers=headers,
    )
    assert key.status_code == 201, key.text

    # The newest event of each action: the tenant's set-up recorded some as Keel's own.
    events: dict[str, StoredEvent] = {}
    for event in await audit_events(app, admin.tenant_id):
        events.setdefault(event.action, event)
    for action in (
        "auth.user.create",
        "auth.role.create",
        "auth.role.assign",
        "auth.api_key.create",
    ):
        event = events[action]
        assert (event.actor_type, event.actor_id) == ("user", admin.user_id), action
        assert event.ip_address == "127.0.0.1", action  # httpx's ASGI transport's client
        assert event.user_agent == USER_AGENT, action
    assert events["auth.user.create"].target_id == user_id
    assert events["auth.role.assign"].target_id == user_id
    assert events["auth.api_key.create"].target_id == key.json()["id"]


async def test_a_user_agent_is_kept_to_400_characters(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = {**admin.headers, "User-Agent": "x" * 5000}
    created = await client.post(
        "/auth/v1/roles",
        json={"name": "long-agent", "permissions": ["auth:user:read"]},
        headers=headers,
    )
    assert created.status_code == 201, created.text

    [event] = [
        event
        for event in await audit_events(app, admin.tenant_id, action_prefix="auth.role.create")
        if event.target_id == created.json()["id"]
    ]
    assert event.user_agent == "x" * 400

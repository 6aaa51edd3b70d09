"""Secrets never reach the audit trail or the logs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI

from keel.audit.service import StoredEvent
from tests.support.audit import audit_events
from tests.support.logins import login_tokens
from tests.support.tenants import (
    PASSWORD,
    TenantAdmin,
    bearer,
    create_service_account,
    create_user,
    make_tenant_admin,
)


def _record_text(record: StoredEvent) -> str:
    return json.dumps(record.to_json())


@pytest.mark.usefixtures("json_logs")
async def test_secrets_never_reach_audit_records_or_logs(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    _, client_id, client_secret = await create_service_account(app, admin.tenant_id, "billing")

    tokens = await login_tokens(client, admin.tenant_slug, "alice")
    wrong = await client.post(
        "/auth/v1/login",
        json={"tenant": admin.tenant_slug, "username": "alice", "password": PASSWORD + "x"},
    )
    granted = await client.post(
        "/auth/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        },
    )
    refreshed = await client.post(
        "/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await client.post(
        "/auth/v1/oauth/introspect",
        headers=admin.headers,
        data={"token": refreshed.json()["refresh_token"]},
    )
    await client.get("/auth/v1/me", headers=bearer(admin.api_key))
    await client.post("/auth/v1/oauth/revoke", data={"token": refreshed.json()["refresh_token"]})
    assert wrong.status_code == 401
    assert granted.status_code == 200

    secrets = {
        "password": PASSWORD,
        "wrong password": PASSWORD + "x",
        "client secret": client_secret,
        "refresh token": tokens["refresh_token"],
        "rotated refresh token": refreshed.json()["refresh_token"],
        "api key": admin.api_key,
        "access token": tokens["access_token"],
        "client access token": granted.json()["access_token"],
    }
    records = await audit_events(app, admin.tenant_id, limit=1000)
    audit_text = "\n".join(_record_text(record) for record in records)
    captured = capsys.readouterr()
    logs = captured.out + captured.err

    assert {"auth.session.login", "auth.token.issue", "auth.token.refresh"} <= {
        record.action for record in records
    }
    assert '"route": "/auth/v1/login"' in logs  # the requests were logged
    for name, secret in secrets.items():
        assert secret not in audit_text, f"{name} in the audit trail"
        assert secret not in logs, f"{name} in the logs"


@pytest.mark.usefixtures("json_logs")
async def test_creating_one_user_at_once_twice_is_a_conflict_and_logs_no_hash(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Requests that each find the name free: the database's unique key refuses all but one.
    The others are a 409 a client may act on, not a 500, and the refused statement, whose
    values hold the new password's argon2id hash, reaches no log."""
    body = {"username": "twice", "password": PASSWORD}
    # Administrators of their own: requests of one API key wait for each other's commit.
    admins = [admin] + [await make_tenant_admin(app, admin.tenant_slug) for _ in range(5)]
    answers = await asyncio.gather(
        *(client.post("/auth/v1/users", headers=each.headers, json=body) for each in admins)
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(201) == 1, [answer.text for answer in answers]
    assert set(statuses) == {201, 409}
    for answer in answers:
        if answer.status_code == 409:
            assert answer.headers["content-type"] == "application/problem+json"
            assert "argon2" not in answer.text
    logs = "".join(capsys.readouterr())
    assert "$argon2id$" not in logs

"""TOTP second factor: enrolment, confirmation, logins with codes, replay, the ±1 step window,
recovery codes, turning it off, and the audit trail."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.auth.models import User, UserTotp
from keel.auth.service.mfa import matching_step, new_recovery_code, normalise_code
from keel.core.crypto import DecryptionError
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.logins import login_tokens
from tests.support.tenants import (
    PASSWORD,
    TenantAdmin,
    auth_service,
    bearer,
    create_service_account,
    create_user,
)

STEP = 30


async def steady_now() -> float:
    """Now, at least 3 s before the next 30-second step, so a code's step is the server's."""
    remaining = STEP - time.time() % STEP
    if remaining < 3:
        await asyncio.sleep(remaining + 0.1)
    return time.time()


def code_at(secret: str, steps_from_now: int, now: float) -> str:
    return pyotp.TOTP(secret).at(now + steps_from_now * STEP)


async def _login(
    client: httpx.AsyncClient,
    tenant: str,
    username: str,
    totp_code: str | None = None,
    password: str = PASSWORD,
) -> httpx.Response:
    body: dict[str, Any] = {"tenant": tenant, "username": username, "password": password}
    if totp_code is not None:
        body["totp_code"] = totp_code
    return await client.post("/auth/v1/login", json=body)


async def _user_headers(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, username: str
) -> dict[str, str]:
    await create_user(app, admin.tenant_id, username, email=f"{username}@example.com")
    tokens = await login_tokens(client, admin.tenant_slug, username)
    return bearer(tokens["access_token"])


async def _enrol(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/auth/v1/mfa/totp", headers=headers)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def _enable(
    client: httpx.AsyncClient, headers: dict[str, str], now: float
) -> tuple[str, list[str]]:
    """Enrol and confirm with the *previous* step's code, leaving the current step unspent."""
    secret = await _enrol(client, headers)
    response = await client.post(
        "/auth/v1/mfa/totp/confirm", json={"code": code_at(secret, -1, now)}, headers=headers
    )
    assert response.status_code == 200, response.text
    codes: list[str] = response.json()["recovery_codes"]
    return secret, codes


# -- the window, as a pure function ----------------------------------------------------------


def test_codes_of_the_previous_current_and_next_step_match_and_no_others() -> None:
    secret = pyotp.random_base32()
    now = datetime(2026, 11, 22, 12, 0, 10, tzinfo=UTC)
    step = pyotp.TOTP(secret).timecode(now)
    for offset in (-1, 0, 1):
        code = pyotp.TOTP(secret).generate_otp(step + offset)
        assert matching_step(secret, code, now) == step + offset
    for offset in (-2, 2):
        code = pyotp.TOTP(secret).generate_otp(step + offset)
        # A code of a step two away could collide with a near one by chance (1 in 10^6).
        if code not in {pyotp.TOTP(secret).generate_otp(step + d) for d in (-1, 0, 1)}:
            assert matching_step(secret, code, now) is None
    assert matching_step(secret, "12345", now) is None
    assert matching_step(secret, "abcdef", now) is None


def test_recovery_codes_are_distinct_and_normalise_to_ten_letters() -> None:
    codes = {new_recovery_code() for _ in range(50)}
    assert len(codes) == 50
    for code in codes:
        assert len(code) == 11
        assert code[5] == "-"
        assert normalise_code(code.upper().replace("-", " ")) == code.replace("-", "")


# -- enrolment ------------------------------------------------------------------------------


async def test_enrolment_answers_a_secret_and_otpauth_uri_and_seals_the_secret(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "erin")
    response = await client.post("/auth/v1/mfa/totp", headers=headers)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    secret = body["secret"]
    assert len(secret) == 32
    assert pyotp.TOTP(secret).now().isdigit()
    assert body["otpauth_uri"].startswith("otpauth://totp/Keel:erin%40example.com?")
    assert f"secret={secret}" in body["otpauth_uri"]
    assert "issuer=Keel" in body["otpauth_uri"]

    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(select(UserTotp))
    assert row is not None
    assert row.confirmed_at is None
    assert secret.encode() not in row.secret_sealed
    keyring = auth_service(app).keyring
    assert keyring.open(row.secret_sealed, f"auth.totp:{row.user_id}".encode()) == secret.encode()
    with pytest.raises(DecryptionError):
        keyring.open(row.secret_sealed, b"auth.totp:someone-else")


async def test_an_unconfirmed_enrolment_does_not_guard_logins(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "fay")
    await _enrol(client, headers)
    assert (await _login(client, admin.tenant_slug, "fay")).status_code == 200


async def test_confirm_refuses_a_wrong_code_and_leaves_mfa_off(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "gus")
    secret = await _enrol(client, headers)
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
    response = await client.post("/auth/v1/mfa/totp/confirm", json={"code": wrong}, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    status = (await client.get("/auth/v1/mfa", headers=headers)).json()
    assert status == {"totp_enabled": False, "recovery_codes_left": 0}


async def test_confirm_turns_mfa_on_and_answers_ten_recovery_codes_once(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "hal")
    _, codes = await _enable(client, headers, await steady_now())
    assert len(codes) == len(set(codes)) == 10
    status = (await client.get("/auth/v1/mfa", headers=headers)).json()
    assert status == {"totp_enabled": True, "recovery_codes_left": 10}
    again = await client.post("/auth/v1/mfa/totp/confirm", json={"code": "000000"}, headers=headers)
    assert again.status_code == 409
    reenrol = await client.post("/auth/v1/mfa/totp", headers=headers)
    assert reenrol.status_code == 409


async def test_service_accounts_have_no_second_factor(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, secret = await create_service_account(app, admin.tenant_id, "robot")
    token = await client.post(
        "/auth/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
    )
    response = await client.post("/auth/v1/mfa/totp", headers=bearer(token.json()["access_token"]))
    assert response.status_code == 403


# -- logging in with a second factor ---------------------------------------------------------


async def test_right_password_without_code_answers_mfa_required_and_wrong_password_does_not(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "ida")
    await _enable(client, headers, await steady_now())

    required = await _login(client, admin.tenant_slug, "ida")
    assert required.status_code == 401
    assert required.json()["mfa_required"] is True
    assert required.headers["content-type"] == "application/problem+json"

    wrong_password = await _login(client, admin.tenant_slug, "ida", password="not-the-password")
    unknown_user = await _login(client, admin.tenant_slug, "nobody-here")
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert "mfa_required" not in wrong_password.json()
    assert wrong_password.json()["detail"] == unknown_user.json()["detail"]


async def test_login_with_the_current_code_succeeds_and_the_same_code_is_refused_after(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "jan")
    now = await steady_now()
    secret, _ = await _enable(client, headers, now)

    first = await _login(client, admin.tenant_slug, "jan", code_at(secret, 0, now))
    assert first.status_code == 200, first.text
    assert first.json()["access_token"]

    replay = await _login(client, admin.tenant_slug, "jan", code_at(secret, 0, now))
    assert replay.status_code == 401
    assert "mfa_required" not in replay.json()

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.session.login")
    assert [e.reason for e in events if e.outcome == "failure"][:1] == ["mfa_replayed"]


async def test_a_code_one_step_ahead_is_accepted_and_two_steps_ahead_is_not(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "kim")
    now = await steady_now()
    secret, _ = await _enable(client, headers, now)

    too_far = code_at(secret, 2, now)
    if too_far != code_at(secret, 1, now):  # a chance collision would make this meaningless
        refused = await _login(client, admin.tenant_slug, "kim", too_far)
        assert refused.status_code == 401

    ahead = await _login(client, admin.tenant_slug, "kim", code_at(secret, 1, now))
    assert ahead.status_code == 200
    # Steps only move forward: the current step's code is now older than the last used one.
    behind = await _login(client, admin.tenant_slug, "kim", code_at(secret, 0, now))
    assert behind.status_code == 401


async def test_wrong_codes_count_towards_the_lockout(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "lou")
    now = await steady_now()
    secret, _ = await _enable(client, headers, now)
    valid = {code_at(secret, offset, now) for offset in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)
    for _ in range(2):
        assert (await _login(client, admin.tenant_slug, "lou", wrong)).status_code == 401
    await _login(client, admin.tenant_slug, "lou")  # no code: not a guess, not counted
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        user = await session.scalar(select(User).where(User.username == "lou"))
    assert user is not None
    assert user.failed_login_count == 2


async def test_a_recovery_code_works_once_in_place_of_a_code(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "max")
    _, codes = await _enable(client, headers, await steady_now())

    # Typed loosely: upper case, a space for the dash.
    typed = codes[3].upper().replace("-", " ")
    used = await _login(client, admin.tenant_slug, "max", typed)
    assert used.status_code == 200, used.text
    again = await _login(client, admin.tenant_slug, "max", codes[3])
    assert again.status_code == 401
    other = await _login(client, admin.tenant_slug, "max", codes[4])
    assert other.status_code == 200

    status = (await client.get("/auth/v1/mfa", headers=headers)).json()
    assert status["recovery_codes_left"] == 8


async def test_an_oversized_code_is_refused_by_the_schema(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    response = await _login(client, admin.tenant_slug, "admin", "1" * 65)
    assert response.status_code == 422


# -- turning it off ---------------------------------------------------------------------------


async def test_disabling_needs_the_password_or_a_code(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "ned")
    await _enable(client, headers, await steady_now())

    refused = await client.request(
        "DELETE", "/auth/v1/mfa/totp", json={"password": "wrong-password-1"}, headers=headers
    )
    assert refused.status_code == 401
    assert (await client.get("/auth/v1/mfa", headers=headers)).json()["totp_enabled"] is True

    removed = await client.request(
        "DELETE", "/auth/v1/mfa/totp", json={"password": PASSWORD}, headers=headers
    )
    assert removed.status_code == 204
    assert (await client.get("/auth/v1/mfa", headers=headers)).json() == {
        "totp_enabled": False,
        "recovery_codes_left": 0,
    }
    assert (await _login(client, admin.tenant_slug, "ned")).status_code == 200

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.mfa.disable")
    assert sorted(e.outcome for e in events) == ["denied", "success"]


async def test_disabling_with_a_current_code(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "oli")
    now = await steady_now()
    secret, _ = await _enable(client, headers, now)
    removed = await client.request(
        "DELETE", "/auth/v1/mfa/totp", json={"code": code_at(secret, 0, now)}, headers=headers
    )
    assert removed.status_code == 204
    assert (await _login(client, admin.tenant_slug, "oli")).status_code == 200


# -- the audit trail --------------------------------------------------------------------------


async def test_mfa_events_are_audited_without_secrets_or_codes(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = await _user_headers(app, client, admin, "pia")
    now = await steady_now()
    secret, codes = await _enable(client, headers, now)
    await _login(client, admin.tenant_slug, "pia")  # mfa_required
    await _login(client, admin.tenant_slug, "pia", code_at(secret, 0, now))
    await _login(client, admin.tenant_slug, "pia", codes[0])
    await client.request(
        "DELETE", "/auth/v1/mfa/totp", json={"password": PASSWORD}, headers=headers
    )

    events = await audit_events(app, admin.tenant_id, limit=500)
    actions = {event.action for event in events}
    assert {
        "auth.mfa.enrol",
        "auth.mfa.confirm",
        "auth.mfa.disable",
        "auth.mfa.recovery_code_use",
    } <= actions
    reasons = {e.reason for e in events if e.action == "auth.session.login"}
    assert "mfa_required" in reasons
    recorded = repr([(e.data, e.reason, e.target_id) for e in events])
    assert secret not in recorded
    assert code_at(secret, 0, now) not in recorded
    assert not any(code in recorded for code in codes)

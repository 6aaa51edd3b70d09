"""The lockout notice handed to the auth service's notice hook (``deliver_account_notice``):
once per run of failed logins — when the threshold locks the account — not for attempts
while it is locked nor for the longer lockouts further failures bring; a successful login
starts a new run. The notice holds no password or token. A login from a device (user agent
without versions, IP network) the user has not used is told too; only keyed hashes are kept."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from keel.auth.models import KnownDevice, User
from keel.auth.service import AccountNotice, AccountNoticeKind
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.logins import login
from tests.support.tenants import PASSWORD, TenantAdmin, auth_service, create_user

WRONG = "not-the-Password-71"
THRESHOLD = 5  # KEEL_AUTH__LOCKOUT_THRESHOLD's default


async def fail(client: httpx.AsyncClient, tenant: str, times: int) -> None:
    for _ in range(times):
        assert (await login(client, tenant, "kim", WRONG)).status_code == 401


async def unlock_by_time(app: FastAPI, tenant_id: str) -> None:
    """The lockout's end, without waiting for it."""
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        user = await session.scalar(select(User).where(User.username == "kim"))
        assert user is not None
        user.locked_until = utcnow() - timedelta(seconds=1)


async def settle(notices: list[AccountNotice], count: int) -> None:
    """The hook runs in a task after the 401: wait for ``count`` notices, then a little."""
    deadline = time.monotonic() + 30
    while len(notices) < count:
        assert time.monotonic() < deadline, f"{len(notices)} of {count} notices"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)


async def test_a_lockout_is_told_once_per_run_of_failures_without_secrets(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    notices: list[AccountNotice] = []
    auth_service(app).deliver_account_notice = notices.append
    user = await create_user(app, admin.tenant_id, "kim", email="kim@example.com")

    await fail(client, admin.tenant_slug, THRESHOLD - 1)
    await asyncio.sleep(0.1)
    assert notices == []
    await fail(client, admin.tenant_slug, 1)  # locks
    await fail(client, admin.tenant_slug, 3)  # while locked
    await settle(notices, 1)

    [notice] = notices
    assert notice.kind == AccountNoticeKind.lockout
    assert (notice.tenant_id, notice.user_id, notice.email) == (
        admin.tenant_id,
        user.id,
        "kim@example.com",
    )
    assert notice.until is not None
    assert notice.until - notice.at == timedelta(seconds=30)  # the first lockout's length
    assert WRONG not in repr(notice)
    assert PASSWORD not in repr(notice)

    # After the lockout, one more failure locks again (longer), told no more.
    await unlock_by_time(app, admin.tenant_id)
    await fail(client, admin.tenant_slug, 1)
    await asyncio.sleep(0.2)
    assert len(notices) == 1

    # A successful login ends the run; the next run's lockout is told again.
    await unlock_by_time(app, admin.tenant_id)
    assert (await login(client, admin.tenant_slug, "kim", PASSWORD)).status_code == 200
    await fail(client, admin.tenant_slug, THRESHOLD)
    await settle(notices, 2)
    assert len(notices) == 2


async def test_a_user_without_an_email_address_is_locked_out_without_a_notice(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    notices: list[AccountNotice] = []
    auth_service(app).deliver_account_notice = notices.append
    await create_user(app, admin.tenant_id, "kim")

    await fail(client, admin.tenant_slug, THRESHOLD + 1)
    await asyncio.sleep(0.2)

    assert notices == []
    assert (await login(client, admin.tenant_slug, "kim", PASSWORD)).status_code == 401  # locked


# -- new device -------------------------------------------------------------------------------

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
FIREFOX_UPDATED = "Mozilla/5.0 (X11; Linux x86_64; rv:141.0) Gecko/20100101 Firefox/141.0"
SAFARI = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) Version/18.5 Mobile Safari/604.1"


async def login_from(app: FastAPI, tenant: str, address: str, user_agent: str) -> None:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
        answer = await http.post(
            "/auth/v1/login",
            json={"tenant": tenant, "username": "kim", "password": PASSWORD},
            headers={"User-Agent": user_agent},
        )
    assert answer.status_code == 200, answer.text


async def test_a_login_from_a_new_device_is_told_and_a_known_one_is_not(
    app: FastAPI, admin: TenantAdmin
) -> None:
    notices: list[AccountNotice] = []
    auth_service(app).deliver_account_notice = notices.append
    user = await create_user(app, admin.tenant_id, "kim", email="kim@example.com")
    tenant = admin.tenant_slug

    await login_from(app, tenant, "198.51.100.7", FIREFOX)  # the first login: nothing to compare
    await login_from(app, tenant, "198.51.100.7", FIREFOX)  # known
    await login_from(app, tenant, "198.51.100.99", FIREFOX_UPDATED)  # same network, an update
    await asyncio.sleep(0.2)
    assert notices == []

    await login_from(app, tenant, "198.51.100.7", SAFARI)  # another browser
    await settle(notices, 1)
    await login_from(app, tenant, "203.0.113.5", FIREFOX)  # another network
    await settle(notices, 2)
    await login_from(app, tenant, "203.0.113.6", FIREFOX)  # that network, known now
    await asyncio.sleep(0.2)

    assert [notice.kind for notice in notices] == [AccountNoticeKind.new_device] * 2
    assert [(n.device, n.ip_address) for n in notices] == [
        (SAFARI, "198.51.100.7"),
        (FIREFOX, "203.0.113.5"),
    ]
    assert {(n.user_id, n.email) for n in notices} == {(user.id, "kim@example.com")}
    assert all(PASSWORD not in repr(notice) for notice in notices)

    # Only keyed hashes are kept: no user agent, no address.
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        hashes = list(
            await session.scalars(
                select(KnownDevice.device_hash).where(KnownDevice.user_id == user.id)
            )
        )
    assert len(hashes) == 3
    assert all(len(digest) == 64 for digest in hashes)
    stored = " ".join(hashes)
    for clue in ("198.51.100", "203.0.113", "firefox", "safari", "mozilla"):
        assert clue not in stored.lower()

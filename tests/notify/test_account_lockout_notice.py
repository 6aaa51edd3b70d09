"""The lockout notice, on SQLite and PostgreSQL: the failed login that locks an account sends
its user one critical e-mail (``account.lockout``) through the notification service — one,
not one per further attempt while locked — holding no password and no token; a tenant's own
template replaces the built-in one; without an email provider the old log line stays. A
login from a new device sends the critical `account.new-device`."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI

from keel.notify.service.account_mail import AccountNoticeMail
from tests.notify.conftest import Notify
from tests.notify.test_account_mail import parse, parts_of
from tests.support.logins import login
from tests.support.tenants import PASSWORD, TenantAdmin, auth_service, create_user

WRONG = "not-the-Password-71"
#: The default lockout threshold (``KEEL_AUTH__LOCKOUT_THRESHOLD``).
THRESHOLD = 5


async def fail_logins(client: httpx.AsyncClient, tenant: str, username: str, times: int) -> None:
    for _ in range(times):
        answer = await login(client, tenant, username, WRONG)
        assert answer.status_code == 401, answer.text


async def deliver_until(notify: Notify, count: int, *, timeout: float = 5.0) -> None:
    """The notice is accepted in a task after the 401; deliver until ``count`` arrived."""
    deadline = time.monotonic() + timeout
    while len(notify.smtp.messages) < count:
        assert time.monotonic() < deadline, f"{len(notify.smtp.messages)} of {count} arrived"
        await notify.deliver()
        await asyncio.sleep(0.05)


async def test_the_login_that_locks_an_account_sends_one_critical_notice_without_secrets(
    notify: Notify, app: FastAPI
) -> None:
    assert isinstance(auth_service(app).deliver_account_notice, AccountNoticeMail)
    tenant = notify.admin.tenant_slug
    await create_user(app, notify.admin.tenant_id, "lou", email="lou@example.com")

    await fail_logins(notify.client, tenant, "lou", THRESHOLD - 1)
    await asyncio.sleep(0.2)
    await notify.deliver()
    assert notify.smtp.messages == []  # not locked yet: nothing to tell

    await fail_logins(notify.client, tenant, "lou", 1)  # this one locks
    await fail_logins(notify.client, tenant, "lou", 3)  # while locked: counted, not told
    assert (await login(notify.client, tenant, "lou", PASSWORD)).status_code == 401  # locked
    await deliver_until(notify, 1)
    await asyncio.sleep(0.3)
    await notify.deliver()

    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("lou@example.com",)
    message = parse(mail.data)
    assert message["Subject"] == "Your account was locked after failed sign-ins"
    assert message["List-Unsubscribe"] is None  # critical
    parts = parts_of(message)
    assert "locked" in parts["text/plain"]
    assert "lou@example.com" in parts["text/plain"]
    for secret in (WRONG, PASSWORD, "kot_"):
        assert secret not in mail.data.decode(errors="replace")
    [listed] = (await notify.call("GET", "/messages")).json()["messages"]
    sent = await notify.message(listed["id"])
    assert (sent["status"], sent["template"], sent["category"]) == (
        "sent",
        "account.lockout",
        "account",
    )


async def test_a_tenant_template_replaces_the_built_in_lockout_notice(
    notify: Notify, app: FastAPI
) -> None:
    own = {
        "default_locale": "en",
        "locales": {
            "en": {
                "subject": "Acme: {{ email }} is locked",
                "text": "Locked until {{ locked_until }}. Call us.",
            }
        },
        "sample_data": {"email": "a@example.com", "locked_until": "2030-01-01T00:00:00+00:00"},
    }
    await notify.call("PUT", "/categories/account", json={"critical": True})
    await notify.publish("account.lockout", own, category="account")
    await create_user(app, notify.admin.tenant_id, "max", email="max@example.com")

    await fail_logins(notify.client, notify.admin.tenant_slug, "max", THRESHOLD)
    await deliver_until(notify, 1)

    [mail] = notify.smtp.messages
    assert parse(mail.data)["Subject"] == "Acme: max@example.com is locked"
    template = (await notify.call("GET", "/templates/account.lockout")).json()
    assert template["latest_version"] == 1  # the built-in was never published over it


@pytest.mark.usefixtures("json_logs")
async def test_without_an_email_provider_a_lockout_answers_as_before_and_only_logs(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await create_user(app, admin.tenant_id, "ned", email="ned@example.com")

    await fail_logins(client, admin.tenant_slug, "ned", THRESHOLD + 1)
    deadline = time.monotonic() + 30
    logs = ""
    while "auth.account_notice" not in logs:
        assert time.monotonic() < deadline, "the old hook never ran"
        await asyncio.sleep(0.05)
        logs += "".join(capsys.readouterr())
    await asyncio.sleep(0.2)
    logs += "".join(capsys.readouterr())

    assert logs.count('"event": "auth.account_notice"') == 1  # the old hook ran, once
    assert "notify.account_mail.unconfigured" in logs
    assert WRONG not in logs
    messages = await client.get("/notify/v1/messages", headers=admin.headers)
    assert messages.status_code == 200
    assert messages.json()["messages"] == []


async def test_a_login_from_a_new_device_sends_a_critical_notice(
    notify: Notify, app: FastAPI
) -> None:
    await create_user(app, notify.admin.tenant_id, "ivy", email="ivy@example.com")
    tenant = notify.admin.tenant_slug
    for user_agent in ("Firefox/140.0", "Firefox/140.0", "Safari/604.1"):
        answer = await notify.client.post(
            "/auth/v1/login",
            json={"tenant": tenant, "username": "ivy", "password": PASSWORD},
            headers={"User-Agent": user_agent},
        )
        assert answer.status_code == 200, answer.text
    await deliver_until(notify, 1)
    await asyncio.sleep(0.3)
    await notify.deliver()

    [mail] = notify.smtp.messages  # the first login is not told, the known one neither
    assert mail.rcpt_tos == ("ivy@example.com",)
    message = parse(mail.data)
    assert message["Subject"] == "A sign-in from a new device"
    assert message["List-Unsubscribe"] is None
    assert "Safari/604.1" in parts_of(message)["text/plain"]
    assert PASSWORD not in mail.data.decode(errors="replace")

"""Keel's own account e-mails go through the notification service, on SQLite and PostgreSQL:
a password reset asked for through the auth API arrives at a real SMTP server (aiosmtpd) as a
critical message (no unsubscribe), with a token that completes the reset, and the token is in
no log line and no audit event; a tenant's own template replaces the built-in one; a tenant
without an email provider still gets its 202 and the old log line."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage
from email.policy import default

import httpx
import pytest
from fastapi import FastAPI

from keel.notify.service.account_mail import AccountMail
from tests.notify.conftest import Notify
from tests.support.audit import audit_events
from tests.support.logins import login
from tests.support.tenants import PASSWORD, TenantAdmin, auth_service, create_user

NEW_PASSWORD = "saffron-Glacier-lantern-19"
TOKEN = re.compile(r"kot_[A-Za-z0-9_-]{20,}")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def parts_of(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.iter_parts()}


async def request_reset(client: httpx.AsyncClient, tenant: str, address: str) -> None:
    answer = await client.post("/auth/v1/password-reset", json={"tenant": tenant, "email": address})
    assert answer.status_code == 202, answer.text


async def confirm_reset(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/auth/v1/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )


@pytest.mark.usefixtures("json_logs")
async def test_a_password_reset_arrives_by_email_critical_and_its_token_resets_the_password(
    notify: Notify, app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = notify.admin
    assert isinstance(auth_service(app).deliver_account_token, AccountMail)
    await create_user(app, admin.tenant_id, "rita", email="rita@example.com")

    await request_reset(notify.client, admin.tenant_slug, "rita@example.com")
    assert notify.smtp.messages == []  # accepted, not sent: delivery is the jobs engine's
    assert await notify.deliver() == 1

    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("rita@example.com",)
    message = parse(mail.data)
    assert message["Subject"] == "Reset your password"
    # Critical: no RFC 8058 headers, no unsubscribe link, no tracked links.
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None
    parts = parts_of(message)
    assert "unsubscribe" not in parts["text/plain"].lower()
    [token] = set(TOKEN.findall(parts["text/plain"]))
    assert f"<code>{token}</code>" in parts["text/html"]

    # The message is sent, in the critical category, and its data (the token) is gone.
    [listed] = (await notify.call("GET", "/messages")).json()["messages"]
    sent = await notify.message(listed["id"])
    assert (sent["status"], sent["template"], sent["category"]) == (
        "sent",
        "account.password-reset",
        "account",
    )
    assert token not in str(sent)
    [category] = [
        each
        for each in (await notify.call("GET", "/categories")).json()["categories"]
        if each["name"] == "account"
    ]
    assert category["critical"] is True

    # The token from the e-mail completes the reset, once.
    assert (await confirm_reset(notify.client, token)).status_code == 204
    assert (await login(notify.client, admin.tenant_slug, "rita", NEW_PASSWORD)).status_code == 200
    assert (await login(notify.client, admin.tenant_slug, "rita", PASSWORD)).status_code == 401
    assert (await confirm_reset(notify.client, token)).status_code == 422

    # The send and the built-ins are audited; the token is in no audit event and no log line.
    events = await audit_events(app, admin.tenant_id, limit=1000)
    actions = {event.action for event in events}
    assert {"notify.message.send", "notify.template.publish", "notify.category.put"} <= actions
    assert token not in "\n".join(str(event.to_json()) for event in events)
    logs = "".join(capsys.readouterr())
    assert '"route": "/auth/v1/password-reset"' in logs  # the requests were logged
    assert token not in logs


async def test_an_email_verification_arrives_and_its_token_verifies_the_address(
    notify: Notify, app: FastAPI
) -> None:
    user = await create_user(app, notify.admin.tenant_id, "vic", email="vic@example.com")

    answer = await notify.client.post(
        f"/auth/v1/users/{user.id}/verify-email", headers=notify.headers
    )
    assert answer.status_code == 202, answer.text
    assert await notify.deliver() == 1

    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("vic@example.com",)
    message = parse(mail.data)
    assert message["Subject"] == "Confirm your e-mail address"
    assert message["List-Unsubscribe"] is None
    [token] = set(TOKEN.findall(parts_of(message)["text/plain"]))
    confirmed = await notify.client.post("/auth/v1/verify-email/confirm", json={"token": token})
    assert confirmed.status_code == 204
    shown = await notify.client.get(f"/auth/v1/users/{user.id}", headers=notify.headers)
    assert shown.json()["is_email_verified"] is True


async def test_a_tenant_template_of_the_same_name_replaces_the_built_in_one(
    notify: Notify, app: FastAPI
) -> None:
    """The tenant's own words and link; the link reaches the mail as written (a critical
    message's links are not rewritten through click tracking, which would carry the token)."""
    own = {
        "default_locale": "en",
        "locales": {
            "en": {
                "subject": "Acme: your reset link",
                "html": '<p><a href="https://app.acme.example/reset?token={{ token }}">'
                "Choose a new password</a></p>",
                "text": "Open https://app.acme.example/reset?token={{ token }}",
            }
        },
        "sample_data": {"token": "kot_example"},
    }
    await notify.call("PUT", "/categories/account", json={"critical": True})
    await notify.publish("account.password-reset", own, category="account")
    await create_user(app, notify.admin.tenant_id, "sam", email="sam@example.com")

    await request_reset(notify.client, notify.admin.tenant_slug, "sam@example.com")
    assert await notify.deliver() == 1

    [mail] = notify.smtp.messages
    message = parse(mail.data)
    assert message["Subject"] == "Acme: your reset link"
    assert message["List-Unsubscribe"] is None
    html = parts_of(message)["text/html"]
    [token] = TOKEN.findall(html)
    assert f'href="https://app.acme.example/reset?token={token}"' in html
    template = (await notify.call("GET", "/templates/account.password-reset")).json()
    assert template["latest_version"] == 1  # the built-in was never published over it
    assert (await confirm_reset(notify.client, token)).status_code == 204


@pytest.mark.usefixtures("json_logs")
async def test_a_tenant_template_that_does_not_render_with_the_token_falls_back_to_the_log(
    notify: Notify, app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reset still answers 202; nothing is queued, and the warning names the error, not
    the token."""
    wants_more = {
        "default_locale": "en",
        "locales": {"en": {"subject": "Hi {{ first_name }}", "text": "{{ token }}"}},
        "sample_data": {"first_name": "Ada", "token": "kot_example"},
    }
    await notify.publish("account.password-reset", wants_more, category="onboarding")
    await create_user(app, notify.admin.tenant_id, "wes", email="wes@example.com")

    await request_reset(notify.client, notify.admin.tenant_slug, "wes@example.com")

    assert await notify.deliver() == 0
    assert notify.smtp.messages == []
    assert (await notify.call("GET", "/messages")).json()["messages"] == []
    logs = "".join(capsys.readouterr())
    assert "notify.account_mail.failed" in logs
    assert "ValidationFailed" in logs
    assert "auth.account_token.requested" in logs
    assert not TOKEN.search(logs)


@pytest.mark.usefixtures("json_logs")
async def test_without_an_email_provider_a_reset_answers_as_before_and_only_logs(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await create_user(app, admin.tenant_id, "una", email="una@example.com")

    answer = await client.post(
        "/auth/v1/password-reset", json={"tenant": admin.tenant_slug, "email": "una@example.com"}
    )

    assert answer.status_code == 202
    logs = "".join(capsys.readouterr())
    assert "auth.account_token.requested" in logs  # the old hook ran
    assert "notify.account_mail.unconfigured" in logs
    assert not TOKEN.search(logs)
    # Nothing was made for the tenant: no category, no template, no message.
    listed = await client.get("/notify/v1/templates", headers=admin.headers)
    assert listed.status_code == 200
    assert listed.json()["templates"] == []
    messages = await client.get("/notify/v1/messages", headers=admin.headers)
    assert messages.json()["messages"] == []

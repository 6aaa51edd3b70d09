"""Email end to end, on SQLite and PostgreSQL: a send through the API is delivered by the
jobs runner to a real SMTP server (aiosmtpd) as MIME a mail client reads, signed with a DKIM
signature dkimpy verifies, carrying RFC 8058 one-click unsubscribe headers that work (a POST
unsubscribes, a GET does not), and tracked opens and clicks."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default
from typing import Any
from urllib.parse import urlsplit

import dkim

from tests.notify.conftest import DKIM_DOMAIN, DKIM_SELECTOR, WELCOME, Notify


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def send_welcome(notify: Notify, **fields: Any) -> dict[str, Any]:
    answer = await notify.send(
        template="welcome", to="ada@example.com", data={"name": "Ada"}, **fields
    )
    assert answer.status_code == 202, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def test_an_email_arrives_as_mime_signed_with_dkim_and_one_click_unsubscribe(
    notify: Notify,
) -> None:
    accepted = await send_welcome(notify, tags=["onboarding"])
    assert accepted["status"] == "queued"
    assert await notify.deliver() == 1

    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("ada@example.com",)
    assert mail.mail_from == "no-reply@acme.example"
    message = parse(mail.data)
    assert message["Subject"] == "Welcome, Ada"
    assert message["From"] == "Acme <no-reply@acme.example>"
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert "Hi Ada" in parts["text/plain"]
    assert "<p>Hi Ada</p>" in parts["text/html"]

    # DKIM: the signature verifies against the published key and covers the RFC 8058 headers.
    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{DKIM_SELECTOR}._domainkey.{DKIM_DOMAIN}.".encode()
        return notify.dkim_txt.encode()

    assert dkim.verify(mail.data, dnsfunc=dns)
    signed = message["DKIM-Signature"].replace(" ", "").replace("\r\n", "")
    signed_headers = signed.split("h=")[1].split(";")[0].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(signed_headers)

    # RFC 8058: the header's URL, the one-click POST header, and a visible link.
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # On the wire as a plain <URL>: an RFC 2047 encoded word (what the library writes for a
    # header longer than 78 characters with no space to fold at) is no URL to a mail client.
    assert b"\r\nList-Unsubscribe: <http://" in mail.data.split(b"\r\n\r\n")[0]
    url = str(message["List-Unsubscribe"]).strip().strip("<>")
    assert url in parts["text/plain"]

    sent = await notify.message(accepted["id"])
    assert sent["status"] == "sent"
    assert sent["provider"] == "smtp"
    assert [event["status"] for event in sent["events"]] == ["queued", "sent"]

    # A GET (a mail scanner following the link) shows a page and unsubscribes nobody.
    page = await notify.client.get(path_of(url))
    assert page.status_code == 200
    assert "<form method='post'>" in page.text
    suppressions = await notify.call("GET", "/suppressions")
    assert suppressions.json()["suppressions"] == []

    # The one-click POST unsubscribes, with no login and no redirect.
    answer = await notify.client.post(
        path_of(url),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200
    [suppressed] = (await notify.call("GET", "/suppressions")).json()["suppressions"]
    assert (suppressed["address"], suppressed["reason"], suppressed["category"]) == (
        "ada@example.com",
        "unsubscribe",
        "onboarding",
    )

    # The next send to the address in that category is suppressed: nothing reaches SMTP.
    again = await send_welcome(notify)
    assert again["status"] == "suppressed"
    assert await notify.deliver() == 0
    assert len(notify.smtp.messages) == 1


async def test_a_forged_unsubscribe_token_changes_nothing(notify: Notify) -> None:
    answer = await notify.client.post("/notify/v1/unsubscribe/" + "A" * 32)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_opens_and_clicks_are_tracked_and_a_link_redirects_only_where_the_mail_pointed(
    notify: Notify,
) -> None:
    accepted = await send_welcome(notify)
    await notify.deliver()
    html = {
        part.get_content_type(): part.get_content()
        for part in parse(notify.smtp.messages[0].data).iter_parts()
    }["text/html"]
    pixel = html.split('<img src="')[1].split('"')[0].replace("&amp;", "&")
    click = html.split('<a href="')[1].split('"')[0].replace("&amp;", "&")
    assert "acme.example/start" not in click.split("?")[0]  # rewritten through Keel

    opened = await notify.client.get(path_of(pixel))
    assert opened.status_code == 200
    assert opened.headers["content-type"] == "image/gif"
    assert (await notify.message(accepted["id"]))["status"] == "opened"

    clicked = await notify.client.get(path_of(click))
    assert clicked.status_code == 302
    assert clicked.headers["location"] == "https://acme.example/start?x=1&y=2"
    assert (await notify.message(accepted["id"]))["status"] == "clicked"

    # The same link pointed elsewhere is refused: no open redirect.
    forged = path_of(click).replace("acme.example", "evil.test")
    answer = await notify.client.get(forged)
    assert answer.status_code == 404
    assert "location" not in answer.headers


async def test_a_repeated_idempotency_key_sends_once(notify: Notify) -> None:
    body = {"template": "welcome", "to": "ada@example.com", "data": {"name": "Ada"}}
    headers = {**notify.headers, "Idempotency-Key": "welcome-ada-1"}
    first = await notify.client.post("/notify/v1/messages", json=body, headers=headers)
    second = await notify.client.post("/notify/v1/messages", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert await notify.deliver() == 1
    assert len(notify.smtp.messages) == 1


async def test_a_temporary_smtp_failure_is_retried_later_not_lost(notify: Notify) -> None:
    notify.smtp.fail_next(1, "451 4.7.1 try later")
    accepted = await send_welcome(notify)
    await notify.deliver()
    waiting = await notify.message(accepted["id"])
    assert waiting["status"] == "queued"
    assert waiting["attempts"] == 1
    assert "retry_at" in waiting["events"][-1]["detail"]
    assert notify.smtp.messages == []


async def test_a_hard_bounce_suppresses_the_address(notify: Notify) -> None:
    notify.smtp.reject_recipient("gone@example.com")
    answer = await notify.send(template="welcome", to="gone@example.com", data={"name": "X"})
    await notify.deliver()
    bounced = await notify.message(answer.json()["id"])
    assert bounced["status"] == "bounced"
    [suppressed] = (await notify.call("GET", "/suppressions")).json()["suppressions"]
    assert (suppressed["address"], suppressed["reason"]) == ("gone@example.com", "bounce")


async def test_deliveries_are_counted_per_channel_provider_and_outcome(notify: Notify) -> None:
    await send_welcome(notify)
    notify.smtp.reject_recipient("gone@example.com")
    await notify.send(template="welcome", to="gone@example.com", data={"name": "X"})
    await notify.deliver()
    exposition = (await notify.client.get("/metrics")).text
    assert (
        'keel_notify_deliveries_total{channel="email",outcome="sent",provider="smtp"} 1.0'
        in exposition
    )
    assert (
        'keel_notify_deliveries_total{channel="email",outcome="bounced",provider="smtp"} 1.0'
        in exposition
    )
    assert 'keel_notify_delivery_seconds_count{channel="email"} 2.0' in exposition


async def test_a_batch_to_a_topic_reaches_each_subscriber_once(notify: Notify) -> None:
    for name in ("ada", "grace", "linus"):
        answer = await notify.call(
            "PUT", f"/recipients/{name}", json={"email": f"{name}@example.com"}
        )
        assert answer.status_code == 201, answer.text
    answer = await notify.call(
        "POST", "/topics/release-notes/subscribers", json={"recipients": ["ada", "grace"]}
    )
    assert answer.status_code == 200, answer.text
    answer = await notify.call(
        "POST",
        "/messages/batch",
        json={"template": "welcome", "topic": "release-notes", "data": {"name": "reader"}},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["messages"] == 2
    await notify.deliver()
    assert sorted(mail.rcpt_tos[0] for mail in notify.smtp.messages) == [
        "ada@example.com",
        "grace@example.com",
    ]
    both = await notify.call(
        "POST",
        "/messages/batch",
        json={
            "template": "welcome",
            "topic": "release-notes",
            "recipients": [{"to": "x@example.com"}],
        },
    )
    assert both.status_code == 422
    empty = await notify.call(
        "POST", "/messages/batch", json={"template": "welcome", "topic": "nobody-here"}
    )
    assert empty.status_code == 422


async def test_a_test_send_renders_the_chosen_version_with_its_sample_data(notify: Notify) -> None:
    second = {
        **WELCOME,
        "locales": {"en": {"subject": "Second, {{ name }}", "text": "v2 {{ name }}"}},
        "sample_data": {"name": "Sample"},
    }
    await notify.publish("welcome", second)
    answer = await notify.call(
        "POST", "/templates/welcome/test-send", json={"to": "me@example.com", "version": 1}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["tags"] == ["test-send"]
    assert answer.json()["template_version"] == 1
    await notify.deliver()
    [mail] = notify.smtp.messages
    assert parse(mail.data)["Subject"] == "Welcome, Ada"  # version 1 and its sample data

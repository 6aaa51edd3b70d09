"""Who may do what, on SQLite and PostgreSQL: a member holding only
``notify:messages:read`` reads messages but cannot send or publish; another tenant sees none
of this tenant's messages; and the login-free links in an email (one-click unsubscribe,
tracked clicks) act only on the message they were made for."""

from __future__ import annotations

import email
from dataclasses import replace
from email.policy import default
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from tests.notify.conftest import API, WELCOME, Notify
from tests.support.tenants import make_tenant_admin, member


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def assert_problem(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_a_reader_reads_messages_but_cannot_send_or_publish(
    notify: Notify, app: FastAPI
) -> None:
    accepted = await notify.send(template="welcome", to="ada@example.com", data={"name": "Ada"})
    reader = await member(app, notify.admin, "notify:messages:read")

    read = await notify.client.get(f"{API}/messages/{accepted.json()['id']}", headers=reader)
    assert read.status_code == 200

    sent = await notify.client.post(
        f"{API}/messages",
        headers=reader,
        json={"template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}},
    )
    assert_problem(sent, 403)
    batch = await notify.client.post(
        f"{API}/messages/batch",
        headers=reader,
        json={"template": "welcome", "recipients": [{"to": "bob@example.com"}]},
    )
    assert_problem(batch, 403)
    published = await notify.client.post(
        f"{API}/templates/welcome/versions", headers=reader, json={"content": WELCOME}
    )
    assert_problem(published, 403)
    rolled_back = await notify.client.post(
        f"{API}/templates/welcome/rollback", headers=reader, json={"version": 1}
    )
    assert_problem(rolled_back, 403)
    erased = await notify.client.delete(f"{API}/recipients/ada", headers=reader)
    assert_problem(erased, 403)

    # Only the admin's one message exists; the template is still at version 1.
    listed = await notify.client.get(f"{API}/messages", headers=reader)
    assert [message["id"] for message in listed.json()["messages"]] == [accepted.json()["id"]]
    assert (await notify.call("GET", "/templates/welcome")).json()["latest_version"] == 1

    # A sender may send, and still not publish.
    sender = await member(app, notify.admin, "notify:messages:write")
    answer = await notify.client.post(
        f"{API}/messages",
        headers=sender,
        json={"template": "welcome", "to": "bob@example.com", "data": {"name": "Bob"}},
    )
    assert answer.status_code == 202, answer.text
    assert_problem(
        await notify.client.post(
            f"{API}/templates/welcome/versions", headers=sender, json={"content": WELCOME}
        ),
        403,
    )


async def test_another_tenant_cannot_read_a_message_nor_reuse_its_links(
    notify: Notify, app: FastAPI
) -> None:
    accepted = await notify.send(template="welcome", to="ada@example.com", data={"name": "Ada"})
    message_id = accepted.json()["id"]
    await notify.deliver()
    mail = email.message_from_bytes(notify.smtp.messages[0].data, policy=default)
    unsubscribe = path_of(str(mail["List-Unsubscribe"]).strip().strip("<>"))
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    click = html.split('<a href="')[1].split('"')[0].replace("&amp;", "&")

    other = await make_tenant_admin(app)
    other_client = replace(notify, admin=other)
    assert_problem(await other_client.call("GET", f"/messages/{message_id}"), 404)
    assert (await other_client.call("GET", "/messages")).json()["messages"] == []

    # The other tenant sends to the same address: its message is its own.
    await other_client.publish("welcome", WELCOME)
    theirs = await other_client.send(template="welcome", to="ada@example.com", data={"name": "A"})
    assert theirs.status_code == 202, theirs.text
    their_id = theirs.json()["id"]
    assert_problem(await notify.call("GET", f"/messages/{their_id}"), 404)

    # A's unsubscribe token unsubscribes ada from A's mail only.
    answer = await notify.client.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
    assert answer.status_code == 200
    [suppressed] = (await notify.call("GET", "/suppressions")).json()["suppressions"]
    assert suppressed["address"] == "ada@example.com"
    assert (await other_client.call("GET", "/suppressions")).json()["suppressions"] == []
    again = await other_client.send(template="welcome", to="ada@example.com", data={"name": "A"})
    assert again.json()["status"] == "queued"
    history = (await other_client.message(their_id))["events"]
    assert [event["status"] for event in history] == ["queued"]

    # A's signed click link, pointed at the other tenant's message, is refused.
    forged = path_of(click).replace(message_id, their_id)
    assert forged != path_of(click)
    answer = await notify.client.get(forged)
    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert [e["status"] for e in (await other_client.message(their_id))["events"]] == ["queued"]
    await other_client.cancel_waiting_deliveries()  # the fixture cleans up its own tenant only

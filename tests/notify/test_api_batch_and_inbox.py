"""Batches and the in-app inbox, on SQLite and PostgreSQL: a batch of 200 is delivered in
jobs of ``delivery_chunk`` messages, each address receiving exactly one email with its own
data and a suppressed address none; an in-app message lands in the recipient's inbox, read
and counted through the API."""

from __future__ import annotations

import email
from collections import Counter
from email.policy import default

from tests.notify.conftest import Notify


async def test_a_batch_of_200_is_delivered_in_two_jobs_one_email_each_with_its_own_data(
    notify: Notify,
) -> None:
    recipients = [{"to": f"user{n}@example.com", "data": {"name": f"User {n}"}} for n in range(200)]
    answer = await notify.call(
        "POST",
        "/messages/batch",
        json={"template": "welcome", "recipients": recipients, "tags": ["launch"]},
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["messages"] == 200

    # delivery_chunk (100 by default) messages a job: two jobs, every message in one.
    jobs = await notify.delivery_jobs()
    assert sorted(len(job["args"]["messages"]) for job in jobs) == [100, 100]
    in_jobs = [message_id for job in jobs for message_id in job["args"]["messages"]]
    listed = await notify.call(
        "GET", "/messages", params={"batch_id": accepted["batch_id"], "limit": 500}
    )
    batch = listed.json()["messages"]
    assert sorted(in_jobs) == sorted(message["id"] for message in batch)

    # Two addresses are suppressed after the batch was accepted: delivery skips them.
    for address in ("user7@example.com", "user150@example.com"):
        added = await notify.call("POST", "/suppressions", json={"address": address})
        assert added.status_code == 201, added.text

    assert await notify.deliver_own() == 2

    received = Counter(rcpt for mail in notify.smtp.messages for rcpt in mail.rcpt_tos)
    expected = {f"user{n}@example.com" for n in range(200)} - {
        "user7@example.com",
        "user150@example.com",
    }
    assert set(received) == expected
    assert set(received.values()) == {1}
    for mail in notify.smtp.messages:
        subject = email.message_from_bytes(mail.data, policy=default)["Subject"]
        number = mail.rcpt_tos[0].removeprefix("user").removesuffix("@example.com")
        assert subject == f"Welcome, User {number}"
    statuses = Counter(
        message["status"]
        for message in (
            await notify.call(
                "GET", "/messages", params={"batch_id": accepted["batch_id"], "limit": 500}
            )
        ).json()["messages"]
    )
    assert statuses == {"sent": 198, "suppressed": 2}


async def test_an_in_app_message_is_listed_in_the_inbox_unread_until_marked_read(
    notify: Notify,
) -> None:
    await notify.publish(
        "mention",
        {
            "default_locale": "en",
            "locales": {
                "en": {"push_title": "{{ who }} mentioned you", "push_body": "in {{ where }}"}
            },
            "sample_data": {"who": "Ada", "where": "#general"},
        },
        category="onboarding",
    )
    await notify.identify("bob")
    empty = await notify.call("GET", "/recipients/bob/inbox")
    assert empty.json() == {"items": [], "unread": 0}

    first = await notify.send(
        channel="in_app", template="mention", recipient="bob", data={"who": "Ada", "where": "#ops"}
    )
    assert first.status_code == 202, first.text
    assert (await notify.call("GET", "/recipients/bob/inbox")).json()["unread"] == 0
    await notify.deliver()

    inbox = (await notify.call("GET", "/recipients/bob/inbox")).json()
    assert inbox["unread"] == 1
    [item] = inbox["items"]
    assert (item["title"], item["body"], item["message_id"]) == (
        "Ada mentioned you",
        "in #ops",
        first.json()["id"],
    )
    assert item["read_at"] is None
    assert (await notify.message(first.json()["id"]))["status"] == "delivered"
    assert notify.smtp.messages == []  # the inbox is its own channel

    answer = await notify.call("POST", "/recipients/bob/inbox/read", json={"ids": [item["id"]]})
    assert answer.status_code == 200
    assert answer.json()["unread"] == 0
    assert answer.json()["items"][0]["read_at"] is not None

    # Two more; "all" marks both read, and unread_only lists what is left unread.
    for where in ("#a", "#b"):
        await notify.send(
            channel="in_app",
            template="mention",
            recipient="bob",
            data={"who": "Cy", "where": where},
        )
    await notify.deliver()
    unread = (
        await notify.call("GET", "/recipients/bob/inbox", params={"unread_only": True})
    ).json()
    assert (len(unread["items"]), unread["unread"]) == (2, 2)
    answer = await notify.call("POST", "/recipients/bob/inbox/read", json={"all": True})
    assert answer.json()["unread"] == 0
    assert len(answer.json()["items"]) == 3

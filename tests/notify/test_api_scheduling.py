"""Time, on SQLite and PostgreSQL: quiet hours read in the recipient's own zone (Asia/Tokyo
here), wall-clock schedules in that zone, critical categories that ignore quiet hours, and
digests that collect a window's sends into one message.

The clock cannot be changed, so the quiet windows are chosen around *now* in Tokyo, and
"later" is made by moving the rows the jobs engine reads (``Notify.let_time_pass``)."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from keel.core.tenancy import bind_tenant
from keel.notify.models import NotifyMessage
from tests.notify.conftest import Notify

TOKYO = ZoneInfo("Asia/Tokyo")


def at(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def clock(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


async def send(notify: Notify, **body: Any) -> dict[str, Any]:
    answer = await notify.send(**body)
    assert answer.status_code in (200, 202), answer.text
    document: dict[str, Any] = answer.json()
    return document


async def waiting_jobs(notify: Notify) -> list[dict[str, Any]]:
    return [job for job in await notify.delivery_jobs() if job["state"] == "scheduled"]


async def test_a_send_inside_tokyo_quiet_hours_waits_until_they_end(notify: Notify) -> None:
    now = datetime.now(TOKYO)
    end = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    quiet = {"start": clock(now - timedelta(hours=1)), "end": clock(end)}
    await notify.identify("ada", email="ada@example.com", timezone="Asia/Tokyo", quiet_hours=quiet)

    accepted = await send(notify, template="welcome", recipient="ada", data={"name": "Ada"})

    # The end of the quiet hours, a Tokyo wall time, is the message's UTC schedule...
    assert accepted["status"] == "queued"
    assert at(accepted["send_at"]) == end.astimezone(UTC)
    # ...and its delivery job's, as an operator sees it in the jobs API.
    [job] = await waiting_jobs(notify)
    assert job["args"] == {"messages": [accepted["id"]]}
    assert at(job["run_at"]) == end.astimezone(UTC)
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []

    # A job run early (a requeue, a clock jump) checks quiet hours again: it is now still
    # inside them in Tokyo, so it sends nothing and waits for the end once more.
    await notify.let_time_pass(until=end.astimezone(UTC))
    assert await notify.deliver_own() == 1
    assert notify.smtp.messages == []
    deferred = await notify.message(accepted["id"])
    assert deferred["status"] == "queued"
    assert deferred["events"][-1]["detail"] == {
        "quiet_hours_until": end.astimezone(UTC).isoformat()
    }
    [again] = await waiting_jobs(notify)
    assert at(again["run_at"]) == end.astimezone(UTC)


async def test_a_wall_time_inside_22_to_08_quiet_hours_is_delivered_at_08_tokyo_time(
    notify: Notify,
) -> None:
    await notify.identify(
        "ada",
        email="ada@example.com",
        timezone="Asia/Tokyo",
        quiet_hours={"start": "22:00", "end": "08:00"},
    )
    tomorrow = datetime.now(TOKYO).date() + timedelta(days=1)
    late_evening = datetime.combine(tomorrow, datetime.min.time()).replace(hour=23, minute=30)

    accepted = await send(
        notify,
        template="welcome",
        recipient="ada",
        data={"name": "Ada"},
        send_at_local=late_evening.isoformat(),
    )

    eight_next_morning = datetime.combine(tomorrow + timedelta(days=1), datetime.min.time())
    expected = eight_next_morning.replace(hour=8, tzinfo=TOKYO).astimezone(UTC)
    assert expected.hour == 23  # 08:00 in Tokyo (UTC+9, no daylight saving) is 23:00 UTC
    assert at(accepted["send_at"]) == expected
    [job] = await waiting_jobs(notify)
    assert at(job["run_at"]) == expected
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []

    # A wall time outside the quiet hours is kept as given, in Tokyo time.
    noon = late_evening.replace(hour=12, minute=0)
    midday = await send(
        notify,
        template="welcome",
        recipient="ada",
        data={"name": "Ada"},
        send_at_local=noon.isoformat(),
    )
    assert at(midday["send_at"]) == noon.replace(tzinfo=TOKYO).astimezone(UTC)


async def test_a_critical_category_ignores_quiet_hours(notify: Notify) -> None:
    answer = await notify.call("PUT", "/categories/security", json={"critical": True})
    assert answer.status_code == 201, answer.text
    await notify.publish(
        "password-reset",
        {
            "default_locale": "en",
            "locales": {"en": {"subject": "Reset your password", "text": "Code {{ code }}"}},
            "sample_data": {"code": "123"},
        },
        category="security",
    )
    now = datetime.now(TOKYO)
    quiet = {"start": clock(now - timedelta(hours=1)), "end": clock(now + timedelta(hours=2))}
    await notify.identify("ada", email="ada@example.com", timezone="Asia/Tokyo", quiet_hours=quiet)

    accepted = await send(notify, template="password-reset", recipient="ada", data={"code": "981"})
    assert at(accepted["send_at"]) <= datetime.now(UTC)
    assert await notify.deliver_own() == 1
    [mail] = notify.smtp.messages
    assert "Code 981" in parse(mail.data).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (await notify.message(accepted["id"]))["status"] == "sent"


DIGEST = {
    "default_locale": "en",
    "locales": {
        "en": {
            "subject": "{{ events | length }} new comments",
            "text": "{% for e in events %}- {{ e.who }}: {{ e.comment }}\n{% endfor %}",
        }
    },
    "sample_data": {"events": [{"who": "Ada", "comment": "Nice"}]},
}


async def stored_data(notify: Notify, message_id: str) -> Any:
    async with notify.context.database.session() as session:
        bind_tenant(session, notify.admin.tenant_id)
        return await session.scalar(
            select(NotifyMessage.data).where(NotifyMessage.id == message_id)
        )


async def test_ten_sends_with_one_digest_key_arrive_as_one_email_after_the_window(
    notify: Notify,
) -> None:
    await notify.publish("comments", DIGEST, category="onboarding")
    digest = {"key": "comments:post-7", "window_seconds": 60}
    answers = [
        await notify.send(
            template="comments",
            to="ada@example.com",
            data={"who": f"user{n}", "comment": f"comment {n}"},
            digest=digest,
        )
        for n in range(10)
    ]

    # The first send made the message (202); the nine others joined it (200).
    assert [answer.status_code for answer in answers] == [202] + [200] * 9
    message_id = answers[0].json()["id"]
    assert {answer.json()["id"] for answer in answers} == {message_id}
    events = (await stored_data(notify, message_id))["events"]
    assert [event["who"] for event in events] == [f"user{n}" for n in range(10)]
    waiting = await notify.message(message_id)
    assert [e["detail"]["events"] for e in waiting["events"] if e["status"] == "digested"] == list(
        range(2, 11)
    )

    # Nothing goes before the window ends: one job, due at the end of the window.
    window_end = at(waiting["send_at"])
    assert 55 <= (window_end - at(waiting["created_at"])).total_seconds() <= 65
    [job] = await waiting_jobs(notify)
    assert at(job["run_at"]) == window_end
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []

    await notify.let_time_pass(until=window_end)
    assert await notify.deliver_own() == 1

    [mail] = notify.smtp.messages
    message = parse(mail.data)
    assert message["Subject"] == "10 new comments"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert [line for line in text.splitlines() if line.startswith("- ")] == [
        f"- user{n}: comment {n}" for n in range(10)
    ]
    assert (await notify.message(message_id))["status"] == "sent"
    assert await stored_data(notify, message_id) is None  # data leaves once final

    # The window has closed: the next send with the key starts a new digest.
    later = await send(
        notify,
        template="comments",
        to="ada@example.com",
        data={"who": "x", "comment": "y"},
        digest=digest,
    )
    assert later["id"] != message_id


async def test_sends_of_two_templates_with_one_digest_key_are_two_digests(
    notify: Notify,
) -> None:
    """A digest is rendered with one template: a send of another template (whose data that
    template may not render) starts its own digest rather than joining — joined, the
    digest would fail to render at delivery and every event in it would be lost."""
    await notify.publish("comments", DIGEST, category="onboarding")
    likes = {
        "default_locale": "en",
        "locales": {
            "en": {
                "subject": "{{ events | length }} new likes",
                "text": "{% for e in events %}{{ e.liker }} liked it\n{% endfor %}",
            }
        },
        "sample_data": {"events": [{"liker": "Ada"}]},
    }
    await notify.publish("likes", likes, category="onboarding")
    digest = {"key": "activity", "window_seconds": 60}
    comment = await send(
        notify,
        template="comments",
        to="ada@example.com",
        data={"who": "Bob", "comment": "Hi"},
        digest=digest,
    )
    like = await send(
        notify, template="likes", to="ada@example.com", data={"liker": "Cy"}, digest=digest
    )
    assert like["id"] != comment["id"]

    await notify.let_time_pass(until=max(at(like["send_at"]), at(comment["send_at"])))
    await notify.deliver()
    subjects = sorted(parse(mail.data)["Subject"] for mail in notify.smtp.messages)
    assert subjects == ["1 new comments", "1 new likes"]
    for accepted in (comment, like):
        assert (await notify.message(accepted["id"]))["status"] == "sent"


async def test_a_batch_member_in_quiet_hours_waits_while_the_others_are_sent(
    notify: Notify,
) -> None:
    """Batches apply quiet hours at delivery, message by message."""
    now = datetime.now(TOKYO)
    end = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    quiet = {"start": clock(now - timedelta(hours=1)), "end": clock(end)}
    await notify.identify("ada", email="ada@example.com", timezone="Asia/Tokyo", quiet_hours=quiet)
    answer = await notify.call(
        "POST",
        "/messages/batch",
        json={
            "template": "welcome",
            "recipients": [
                {"recipient": "ada", "data": {"name": "Ada"}},
                {"to": "bob@example.com", "data": {"name": "Bob"}},
            ],
        },
    )
    assert answer.status_code == 202, answer.text
    await notify.deliver()

    assert [mail.rcpt_tos for mail in notify.smtp.messages] == [("bob@example.com",)]
    [waiting] = (await notify.call("GET", "/messages", params={"recipient": "ada"})).json()[
        "messages"
    ]
    assert waiting["status"] == "queued"
    assert at(waiting["send_at"]) == end.astimezone(UTC)
    [job] = await waiting_jobs(notify)
    assert (job["args"], at(job["run_at"])) == ({"messages": [waiting["id"]]}, end.astimezone(UTC))


async def test_a_category_hourly_limit_skips_sends_beyond_it(notify: Notify) -> None:
    answer = await notify.call("PUT", "/categories/onboarding", json={"hourly_limit": 2})
    assert answer.status_code == 200, answer.text
    await notify.identify("ada", email="ada@example.com")
    statuses = [
        (await send(notify, template="welcome", recipient="ada", data={"name": "Ada"}))["status"]
        for _ in range(3)
    ]
    assert statuses == ["queued", "queued", "skipped"]
    # Another recipient has their own count.
    await notify.identify("bob", email="bob@example.com")
    other = await send(notify, template="welcome", recipient="bob", data={"name": "Bob"})
    assert other["status"] == "queued"
    assert await notify.deliver_own() == 3
    assert len(notify.smtp.messages) == 3

"""``keel.notify`` against a real Keel over TCP, on SQLite and PostgreSQL: a send reaches the
aiosmtpd server once the delivery jobs ran; a send whose answer was lost is retried with its
own ``Idempotency-Key`` and sent once; profiles, preferences, batches, digests and the inbox
work through the SDK; bad input is the SDK's ``ClientError`` carrying Keel's problem."""

from __future__ import annotations

import asyncio
import email
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default

import httpx
import pytest

from keel_client import Keel, SyncKeel
from keel_client.http import ClientError
from keel_client.notify import (
    DEFAULT_PUSH_TEMPLATE,
    PUSH_TEMPLATE_CONTENT,
    BatchRecipient,
    Channel,
    MessageStatus,
    NotifyClient,
    Preference,
    SyncNotifyClient,
)
from tests.client.notify.conftest import quick_retries
from tests.notify.conftest import Notify
from tests.support.tenants import TenantAdmin


def subject_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return str(message["Subject"])


class _LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Keel takes the first request, then the connection drops before its answer arrives."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        response = await self.inner.handle_async_request(request)
        if len(self.keys) == 1:
            await response.aread()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_email_reaches_the_smtp_server_once_delivered(
    keel: Keel, notify: Notify
) -> None:
    assert isinstance(keel.notify, NotifyClient)
    assert keel.notify.api is keel.api  # one pool for every sub-client
    ref = await keel.notify.send_email(
        to="user@example.com",
        template="welcome",
        context={"name": "John"},
        tags=["onboarding"],
        schedule_at=None,
    )
    assert ref.status is MessageStatus.QUEUED
    assert ref.is_queued
    assert ref.message.tags == ["onboarding"]
    assert notify.smtp.messages == []  # accepted, not yet delivered

    assert await notify.deliver() == 1
    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("user@example.com",)
    assert subject_of(mail.data) == "Welcome, John"
    detail = await keel.notify.message(ref.id)
    assert detail.status is MessageStatus.SENT
    assert detail.provider == "smtp"
    assert [event.status for event in detail.events] == ["queued", "sent"]


async def test_a_send_is_one_message_however_often_its_key_reaches_keel(
    keel_url: str, admin: TenantAdmin, notify: Notify
) -> None:
    # The answer to the first attempt is lost: the SDK retries with the same key, and Keel
    # answers the message it already took instead of taking a second.
    transport = _LoseFirstAnswer()
    async with Keel(keel_url, admin.api_key, transport=transport, retry=quick_retries()) as keel:
        ref = await keel.notify.send_email(
            to="ada@example.com", template="welcome", context={"name": "Ada"}
        )
        first, retry = transport.keys
        assert first == retry == ref.idempotency_key

        # The caller repeating a send with its own key gets the same message back.
        again = [
            await keel.notify.send_email(to="ada@example.com", template="welcome",
                                         context={"name": "Ada"}, idempotency_key="welcome-ada")
            for _ in range(2)
        ]  # fmt: skip
        assert again[0].id == again[1].id != ref.id
        assert again[0].idempotency_key == "welcome-ada"

        # A call without a key of the caller's is a send of its own, under a new key.
        other = await keel.notify.send_email(to="ada@example.com", template="welcome",
                                             context={"name": "Ada"})  # fmt: skip
        assert other.idempotency_key not in (ref.idempotency_key, "welcome-ada")

    assert await notify.deliver() == 3
    assert len(notify.smtp.messages) == 3
    listed = (await notify.call("GET", "/messages")).json()["messages"]
    assert sorted(message["id"] for message in listed) == sorted([ref.id, again[0].id, other.id])


async def test_a_recipient_is_reached_through_their_profile_and_choices_until_erased(
    keel: Keel, notify: Notify
) -> None:
    profile = await keel.notify.identify(
        "user-42", email="ada@example.com", locale="ja", traits={"plan": "pro"}
    )
    assert (profile.id, profile.email, profile.locale) == ("user-42", "ada@example.com", "ja")

    # A field not given keeps its value; None clears one.
    profile = await keel.notify.identify("user-42", timezone="Asia/Tokyo", traits=None)
    assert (profile.email, profile.timezone, profile.traits) == (
        "ada@example.com",
        "Asia/Tokyo",
        {},
    )

    ref = await keel.notify.send_email(recipient="user-42", template="welcome",
                                       context={"name": "Ada"})  # fmt: skip
    assert ref.is_queued
    await notify.deliver()
    [mail] = notify.smtp.messages
    assert mail.rcpt_tos == ("ada@example.com",)
    assert subject_of(mail.data) == "ようこそ Ada"  # the profile's locale
    assert [m.id for m in await keel.notify.messages(recipient="user-42")] == [ref.id]

    # Turned off, the category is skipped for them: nothing reaches SMTP.
    choices = await keel.notify.set_preferences("user-42", [("onboarding", "email", False)])
    assert choices == [Preference("onboarding", "email", False)]
    assert await keel.notify.preferences("user-42") == choices
    skipped = await keel.notify.send_email(recipient="user-42", template="welcome",
                                           context={"name": "Ada"})  # fmt: skip
    assert skipped.status is MessageStatus.SKIPPED
    assert not skipped.is_queued
    assert await notify.deliver() == 0

    await keel.notify.erase("user-42")
    with pytest.raises(ClientError) as erased:
        await keel.notify.recipient("user-42")
    assert erased.value.status == 404
    assert len(notify.smtp.messages) == 1


async def test_a_batch_reaches_recipients_and_addresses_each_once(
    keel: Keel, notify: Notify
) -> None:
    await keel.notify.identify("user-1", email="one@example.com")
    batch = await keel.notify.send_batch(
        "welcome",
        ["user-1", BatchRecipient(to="two@example.com", context={"name": "Two"})],
        to=["three@example.com"],
        context={"name": "All"},
        tags=["launch"],
    )
    assert batch.messages == 3
    await notify.deliver()
    delivered = {mail.rcpt_tos[0]: subject_of(mail.data) for mail in notify.smtp.messages}
    assert delivered == {
        "one@example.com": "Welcome, All",
        "two@example.com": "Welcome, Two",  # its own context over the batch's
        "three@example.com": "Welcome, All",
    }
    listed = await keel.notify.messages(batch_id=batch.batch_id)
    assert {message.status for message in listed} == {MessageStatus.SENT}


async def test_a_batch_to_a_topic_reaches_its_subscribers(keel: Keel, notify: Notify) -> None:
    for user in ("user-1", "user-2", "user-3"):
        await keel.notify.identify(user, email=f"{user}@example.com")
    assert await keel.notify.subscribe("launches", ["user-1", "user-2", "user-3"]) == [
        "user-1",
        "user-2",
        "user-3",
    ]
    await keel.notify.unsubscribe("launches", "user-2")
    batch = await keel.notify.send_batch("welcome", topic="launches", context={"name": "All"})
    assert batch.messages == 2
    await notify.deliver()
    assert sorted(mail.rcpt_tos[0] for mail in notify.smtp.messages) == [
        "user-1@example.com",
        "user-3@example.com",
    ]
    with pytest.raises(ValueError, match="one of them"):
        await keel.notify.send_batch("welcome", ["user-1"], topic="launches")


async def test_sends_with_a_digest_key_join_one_waiting_message(keel: Keel, notify: Notify) -> None:
    await notify.publish("comments", {
        "default_locale": "en",
        "locales": {"en": {"subject": "{{ events | length }} new comments",
                           "text": "{% for e in events %}{{ e.who }} {% endfor %}"}},
        "sample_data": {"events": [{"who": "Ada"}]},
    })  # fmt: skip
    first, second = [
        await keel.notify.send("comments", to="ada@example.com", context={"who": who},
                               digest=("comments:ada", timedelta(minutes=5)))
        for who in ("Grace", "Linus")
    ]  # fmt: skip
    assert not first.joined_digest
    assert second.joined_digest
    assert second.id == first.id
    statuses = [event.status for event in (await keel.notify.message(first.id)).events]
    assert statuses == ["queued", "digested"]
    assert await notify.deliver() == 0  # the window has not ended


async def test_push_and_in_app_render_the_default_push_template(keel: Keel, notify: Notify) -> None:
    await keel.notify.identify("user-9", push_targets=[{"kind": "fcm", "token": "device-token-1"}])
    with pytest.raises(ClientError) as missing:
        await keel.notify.send_push("user-9", title="Shipped", body="Tuesday")
    assert missing.value.status == 404
    assert DEFAULT_PUSH_TEMPLATE in (missing.value.detail or "")

    version = await keel.notify.publish_template(DEFAULT_PUSH_TEMPLATE, PUSH_TEMPLATE_CONTENT)
    assert version.number == 1
    push = await keel.notify.send_push("user-9", title="Shipped", body="Tuesday",
                                       data={"order": "A-1"})  # fmt: skip
    assert (push.message.channel, push.message.template) == ("push", DEFAULT_PUSH_TEMPLATE)
    assert push.is_queued

    await keel.notify.send(
        DEFAULT_PUSH_TEMPLATE, channel=Channel.IN_APP, recipient="user-9",
        context={"title": "Shipped", "body": "It arrives on Tuesday"},
    )  # fmt: skip
    await notify.deliver()
    inbox = await keel.notify.inbox("user-9")
    [item] = inbox.items
    assert (item.title, item.body, item.is_read, inbox.unread) == (
        "Shipped",
        "It arrives on Tuesday",
        False,
        1,
    )
    read = await keel.notify.mark_read("user-9", "all")
    assert read.unread == 0
    assert read.items[0].is_read


async def test_bad_input_is_a_client_error_with_the_problem_and_nothing_is_sent(
    keel: Keel, notify: Notify
) -> None:
    with pytest.raises(ClientError) as bad_address:
        await keel.notify.send_email(to="not an address", template="welcome",
                                     context={"name": "X"})  # fmt: skip
    assert bad_address.value.status == 422
    problem = bad_address.value.problem
    assert problem is not None
    assert problem.type == "urn:keel:problem:validation"
    assert "not a valid email" in (problem.detail or "")
    assert problem.request_id == bad_address.value.request_id

    with pytest.raises(ClientError) as no_variable:
        await keel.notify.send_email(to="ada@example.com", template="welcome", context={})
    assert no_variable.value.status == 422
    assert "does not render" in (no_variable.value.detail or "")

    with pytest.raises(ClientError) as unknown:
        await keel.notify.send_email(to="ada@example.com", template="nope", context={})
    assert unknown.value.status == 404

    with pytest.raises(ClientError) as past:
        await keel.notify.send_email(
            to="ada@example.com", template="welcome", context={"name": "X"},
            schedule_at=datetime.now(UTC) - timedelta(hours=1),
        )  # fmt: skip
    assert past.value.status == 422
    assert "past" in (past.value.detail or "")

    # What the SDK can tell before sending, it tells at once.
    with pytest.raises(ValueError, match="timezone-aware"):
        await keel.notify.send_email(to="ada@example.com", template="welcome",
                                     schedule_at=datetime(2030, 1, 1))  # fmt: skip
    with pytest.raises(TypeError, match="sequence"):
        await keel.notify.send_batch("welcome", to="ada@example.com")

    assert await notify.deliver() == 0
    assert notify.smtp.messages == []


async def test_sync_keel_notify_blocks(keel_url: str, admin: TenantAdmin, notify: Notify) -> None:
    def send_and_read() -> tuple[str, MessageStatus | str]:
        with SyncKeel(keel_url, admin.api_key) as keel:
            assert isinstance(keel.notify, SyncNotifyClient)
            ref = keel.notify.send_email(to="ada@example.com", template="welcome",
                                         context={"name": "Ada"})  # fmt: skip
            return ref.id, keel.notify.message(ref.id).status

    # The served Keel runs on this loop: the blocking face runs on a thread meanwhile.
    message_id, status = await asyncio.to_thread(send_and_read)
    assert status is MessageStatus.QUEUED
    assert await notify.deliver() == 1
    assert (await notify.message(message_id))["status"] == "sent"

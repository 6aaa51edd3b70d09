"""Failover through the API, on SQLite and PostgreSQL: a channel's providers are tried in
``position`` order, and a provider that errors or throttles hands the message to the next.
The message arrives once, at the provider that took it, and its history names the ones that
failed (``failed_over``)."""

from __future__ import annotations

from typing import Any

from tests.notify.conftest import Notify
from tests.support.provider_servers import postmark_server, smtp_server, twilio_server
from tests.support.secrets_api import write

PHONE = "+14155552671"


async def put_provider(notify: Notify, name: str, **body: Any) -> None:
    answer = await notify.call("PUT", f"/providers/{name}", json=body)
    assert answer.status_code in (200, 201), answer.text


async def store_credentials(notify: Notify, path: str, fields: dict[str, str]) -> str:
    """The provider's credentials in a KV secret; the provider names it, never holds them."""
    answer = await write(notify.client, notify.admin.api_key, path, fields)
    assert answer.status_code == 200, answer.text
    return f"secret/{path}"


async def send_and_deliver(notify: Notify, **body: Any) -> dict[str, Any]:
    answer = await notify.send(**body)
    assert answer.status_code == 202, answer.text
    await notify.deliver()
    return await notify.message(answer.json()["id"])


async def test_an_smtp_server_answering_451_fails_over_to_the_next_smtp_server(
    notify: Notify,
) -> None:
    async with smtp_server() as busy:
        busy.fail_next(1, "451 4.7.1 try later")
        await put_provider(notify, "busy", kind="smtp", settings=busy.settings(), position=0)
        await put_provider(notify, "smtp", kind="smtp", settings=notify.smtp.settings(), position=1)

        sent = await send_and_deliver(
            notify, template="welcome", to="ada@example.com", data={"name": "Ada"}
        )

        assert busy.messages == []
        [mail] = notify.smtp.messages
        assert mail.rcpt_tos == ("ada@example.com",)
        assert (sent["status"], sent["provider"], sent["attempts"]) == ("sent", "smtp", 1)
        assert sent["events"][-1]["detail"] == {"provider": "smtp", "failed_over": ["busy"]}


async def test_a_postmark_answering_500_or_429_fails_over_to_smtp(notify: Notify) -> None:
    async with postmark_server() as postmark:
        secret = await store_credentials(notify, "notify/postmark", postmark.credentials())
        await put_provider(
            notify,
            "postmark",
            kind="postmark",
            settings=postmark.settings(),
            credentials_secret=secret,
            position=0,
        )
        await put_provider(notify, "smtp", kind="smtp", settings=notify.smtp.settings(), position=1)

        postmark.fail_next(1, status=500)
        postmark.fail_next(1, status=429, retry_after=30, code=405)
        first = await send_and_deliver(
            notify, template="welcome", to="ada@example.com", data={"name": "Ada"}
        )
        second = await send_and_deliver(
            notify, template="welcome", to="bob@example.com", data={"name": "Bob"}
        )

        assert len(postmark.requests) == 2
        assert postmark.messages == []
        assert [mail.rcpt_tos for mail in notify.smtp.messages] == [
            ("ada@example.com",),
            ("bob@example.com",),
        ]
        for sent in (first, second):
            assert (sent["status"], sent["provider"]) == ("sent", "smtp")
            assert sent["events"][-1]["detail"]["failed_over"] == ["postmark"]

        # With Postmark answering again, it takes the next message itself: no failover.
        third = await send_and_deliver(
            notify, template="welcome", to="cy@example.com", data={"name": "Cy"}
        )
        assert (third["status"], third["provider"]) == ("sent", "postmark")
        assert "failed_over" not in third["events"][-1]["detail"]
        assert [message["To"] for message in postmark.messages] == ["cy@example.com"]
        assert len(notify.smtp.messages) == 2


async def test_sms_fails_over_between_two_twilio_accounts_with_credentials_from_secrets(
    notify: Notify,
) -> None:
    await notify.publish(
        "code",
        {
            "default_locale": "en",
            "locales": {"en": {"sms": "Your code is {{ code }}"}},
            "sample_data": {"code": 1},
        },
    )
    async with (
        twilio_server(account_sid="AC" + "1" * 32, auth_token="first-token") as first,
        twilio_server(account_sid="AC" + "2" * 32, auth_token="second-token") as second,
    ):
        for position, (name, server) in enumerate((("twilio-a", first), ("twilio-b", second))):
            secret = await store_credentials(notify, f"notify/{name}", server.credentials())
            await put_provider(
                notify,
                name,
                kind="twilio",
                settings=server.settings(),
                credentials_secret=secret,
                position=position,
            )
        first.fail_next(1, status=429, retry_after=5, code=20429)

        sent = await send_and_deliver(
            notify, channel="sms", template="code", to=PHONE, data={"code": 42}
        )

        assert first.messages == []
        assert len(first.requests) == 1
        [sms] = second.messages
        assert (sms["To"], sms["Body"]) == (PHONE, "Your code is 42")
        assert (sent["status"], sent["provider"]) == ("sent", "twilio-b")
        assert sent["provider_message_id"].startswith("SM")
        assert sent["events"][-1]["detail"]["failed_over"] == ["twilio-a"]
        # The credentials reached Twilio (it checks them) but no error or history shows them.
        assert "first-token" not in str(sent)
        assert "second-token" not in str(sent)


async def test_when_every_provider_fails_the_message_waits_for_a_retry_and_is_not_lost(
    notify: Notify,
) -> None:
    async with smtp_server() as busy:
        busy.fail_next(1, "451 4.7.1 try later")
        notify.smtp.fail_next(1, "421 4.3.2 shutting down")
        await put_provider(notify, "busy", kind="smtp", settings=busy.settings(), position=0)
        await put_provider(notify, "smtp", kind="smtp", settings=notify.smtp.settings(), position=1)

        waiting = await send_and_deliver(
            notify, template="welcome", to="ada@example.com", data={"name": "Ada"}
        )

        assert (waiting["status"], waiting["attempts"]) == ("queued", 1)
        assert "retry_at" in waiting["events"][-1]["detail"]
        assert busy.messages == []
        assert notify.smtp.messages == []
        retries = [job for job in await notify.delivery_jobs() if job["state"] == "scheduled"]
        assert [job["args"] for job in retries] == [{"messages": [waiting["id"]]}]

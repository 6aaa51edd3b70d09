"""Postmark, Twilio and Slack against local servers speaking their APIs."""

from __future__ import annotations

import httpx
import pytest

from keel.notify.providers import (
    ChatPayload,
    EmailPayload,
    ErrorKind,
    ProviderError,
    SmsPayload,
    build_provider,
)
from tests.support.provider_servers import (
    PostmarkTestServer,
    SlackTestServer,
    TwilioTestServer,
    closed_port_url,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMS = SmsPayload(recipient="+14155550100", body="Your code is 123456")


# Postmark -----------------------------------------------------------------------------


async def test_postmark_receives_the_parts_and_the_unsubscribe_headers(
    postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    provider = build_provider(
        "postmark", postmark.settings(message_stream="outbound"), postmark.credentials()
    )
    sent = await provider.send(email)
    await provider.aclose()
    [message] = postmark.messages
    assert message["From"] == "Acme <no-reply@acme.test>"
    assert message["To"] == "user@example.com"
    assert message["Subject"] == "Welcome, John"
    assert message["TextBody"] == email.text
    assert message["HtmlBody"] == email.html
    assert message["MessageStream"] == "outbound"
    headers = {header["Name"]: header["Value"] for header in message["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"] == email.headers["List-Unsubscribe"]
    assert sent.provider_message_id


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (422, 406, ErrorKind.rejected),
        (422, 400, ErrorKind.misconfigured),
        (429, None, ErrorKind.throttled),
        (500, None, ErrorKind.retryable),
    ],
)
async def test_postmark_errors_map_to_kinds(
    postmark: PostmarkTestServer,
    email: EmailPayload,
    status: int,
    code: int | None,
    kind: ErrorKind,
) -> None:
    postmark.fail_next(status=status, code=code, message="You tried to send to inactive recipient")
    provider = build_provider("postmark", postmark.settings(), postmark.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert caught.value.kind is kind
    assert caught.value.status == status


async def test_postmark_bad_token_is_misconfigured_and_not_shown(
    postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    provider = build_provider(
        "postmark", postmark.settings(), {"server_token": "wrong-postmark-token-42"}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert (caught.value.kind, caught.value.status, caught.value.code) == (
        ErrorKind.misconfigured,
        401,
        "10",
    )
    assert "wrong-postmark-token-42" not in str(caught.value)
    assert "wrong-postmark-token-42" not in repr(caught.value)
    assert postmark.messages == []


# Twilio -------------------------------------------------------------------------------


async def test_twilio_receives_the_form_and_answers_its_sid(twilio: TwilioTestServer) -> None:
    provider = build_provider("twilio", twilio.settings(), twilio.credentials())
    sent = await provider.send(SMS)
    await provider.aclose()
    assert twilio.messages == [
        {"To": "+14155550100", "From": "+15005550006", "Body": "Your code is 123456"}
    ]
    assert sent.provider_message_id is not None
    assert sent.provider_message_id.startswith("SM")


async def test_twilio_can_send_from_a_messaging_service(twilio: TwilioTestServer) -> None:
    settings = twilio.settings(messaging_service_sid="MG" + "a" * 32)
    del settings["from_number"]
    provider = build_provider("twilio", settings, twilio.credentials())
    await provider.send(SMS)
    await provider.aclose()
    assert twilio.messages[0]["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in twilio.messages[0]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 21211, ErrorKind.rejected),  # invalid 'To' number
        (400, 21614, ErrorKind.rejected),  # 'To' is not a mobile number
        (400, 21606, ErrorKind.misconfigured),  # 'From' is not ours
        (429, 20429, ErrorKind.throttled),
        (503, None, ErrorKind.retryable),
    ],
)
async def test_twilio_errors_map_to_kinds(
    twilio: TwilioTestServer, status: int, code: int | None, kind: ErrorKind
) -> None:
    twilio.fail_next(status=status, code=code, message="The 'To' number is not valid.")
    provider = build_provider("twilio", twilio.settings(), twilio.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(SMS)
    await provider.aclose()
    assert caught.value.kind is kind


async def test_twilio_bad_auth_token_is_misconfigured_and_not_shown(
    twilio: TwilioTestServer,
) -> None:
    credentials = twilio.credentials() | {"auth_token": "wrong-auth-token-77"}
    provider = build_provider("twilio", twilio.settings(), credentials)
    with pytest.raises(ProviderError) as caught:
        await provider.send(SMS)
    await provider.aclose()
    assert (caught.value.kind, caught.value.code) == (ErrorKind.misconfigured, "20003")
    assert "wrong-auth-token-77" not in str(caught.value)
    assert "wrong-auth-token-77" not in repr(caught.value)


# Slack --------------------------------------------------------------------------------


async def test_slack_receives_text_and_blocks(slack: SlackTestServer) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* done"}}]
    provider = build_provider("slack", slack.settings(), slack.credentials())
    sent = await provider.send(ChatPayload(text="Deploy done", blocks=blocks))
    await provider.aclose()
    assert slack.messages == [{"text": "Deploy done", "blocks": blocks}]
    assert sent.provider == "slack"


async def test_slack_throttling_carries_retry_after(slack: SlackTestServer) -> None:
    slack.fail_next(status=429, retry_after=30)
    provider = build_provider("slack", slack.settings(), slack.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(ChatPayload(text="hi"))
    await provider.aclose()
    assert (caught.value.kind, caught.value.retry_after) == (ErrorKind.throttled, 30.0)


@pytest.mark.parametrize("status", [404, 410])
async def test_a_removed_slack_webhook_is_misconfigured_and_its_url_never_shown(
    slack: SlackTestServer, status: int
) -> None:
    slack.fail_next(status=status, code="no_service")
    provider = build_provider("slack", slack.settings(), slack.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(ChatPayload(text="hi"))
    await provider.aclose()
    assert (caught.value.kind, caught.value.code) == (ErrorKind.misconfigured, "no_service")
    secret_part = slack.path.rsplit("/", 1)[-1]
    for text in (str(caught.value), repr(caught.value)):
        assert slack.webhook_url not in text
        assert secret_part not in text


async def test_slack_server_error_is_retryable(slack: SlackTestServer) -> None:
    slack.fail_next(status=500)
    provider = build_provider("slack", slack.settings(), slack.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(ChatPayload(text="hi"))
    await provider.aclose()
    assert caught.value.kind is ErrorKind.retryable


async def test_a_refused_connection_is_retryable_and_hides_the_webhook_url() -> None:
    url = f"{closed_port_url()}/services/T1/B1/secret-webhook-path-99"
    provider = build_provider("slack", {}, {"webhook_url": url})
    with pytest.raises(ProviderError) as caught:
        await provider.send(ChatPayload(text="hi"))
    await provider.aclose()
    assert caught.value.kind is ErrorKind.retryable
    assert "secret-webhook-path-99" not in str(caught.value)
    assert "secret-webhook-path-99" not in repr(caught.value)


async def test_an_injected_client_is_used_and_left_open(slack: SlackTestServer) -> None:
    async with httpx.AsyncClient() as shared:
        provider = build_provider("slack", slack.settings(), slack.credentials(), http=shared)
        await provider.send(ChatPayload(text="one"))
        await provider.aclose()
        assert not shared.is_closed
    assert len(slack.messages) == 1


async def test_a_provider_too_slow_to_answer_is_retryable(twilio: TwilioTestServer) -> None:
    twilio.stall_next(seconds=0.5)
    provider = build_provider("twilio", twilio.settings(timeout=0.1), twilio.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(SMS)
    await provider.aclose()
    assert caught.value.kind is ErrorKind.retryable
    assert "timed out" in str(caught.value)

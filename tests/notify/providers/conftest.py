"""Payloads the provider tests send, and the provider servers they send to.

An HTTP provider server is started once per test module (starting and stopping one costs
0.2 s) and emptied before each test; a module using them runs its tests on the module's
event loop (``pytestmark = pytest.mark.asyncio(loop_scope="module")``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP

import pytest
import pytest_asyncio

from keel.notify.providers import EmailPayload
from tests.support.provider_servers import (
    FcmTestServer,
    PostmarkTestServer,
    SesTestServer,
    SlackTestServer,
    TwilioTestServer,
    WebPushTestServer,
    fcm_server,
    postmark_server,
    ses_server,
    slack_server,
    twilio_server,
    webpush_server,
)

UNSUBSCRIBE_HEADERS = {
    "List-Unsubscribe": "<https://keel.test/notify/v1/unsubscribe/opaque-token>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "Message-ID": "<welcome-1@acme.test>",
}


def make_email(recipient: str = "user@example.com") -> EmailPayload:
    """A complete multipart message with CRLF line ends, as the service renders one. The
    text part has a line starting with a dot, which SMTP must stuff and unstuff."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "Acme <no-reply@acme.test>"
    message["To"] = recipient
    message["Subject"] = "Welcome, John"
    for name, value in UNSUBSCRIBE_HEADERS.items():
        message[name] = value
    text = "Hello John,\r\n.a line that starts with a dot\r\nBye"
    html = "<p>Hello <b>John</b></p>"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return EmailPayload(
        sender="Acme <no-reply@acme.test>",
        recipient=recipient,
        subject="Welcome, John",
        text=text,
        html=html,
        headers=dict(UNSUBSCRIBE_HEADERS),
        raw=message.as_bytes(),
    )


@pytest.fixture
def email() -> EmailPayload:
    return make_email()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_ses() -> AsyncIterator[SesTestServer]:
    async with ses_server() as server:
        yield server


@pytest.fixture
def ses(shared_ses: SesTestServer) -> SesTestServer:
    shared_ses.reset()
    return shared_ses


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_postmark() -> AsyncIterator[PostmarkTestServer]:
    async with postmark_server() as server:
        yield server


@pytest.fixture
def postmark(shared_postmark: PostmarkTestServer) -> PostmarkTestServer:
    shared_postmark.reset()
    return shared_postmark


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_twilio() -> AsyncIterator[TwilioTestServer]:
    async with twilio_server() as server:
        yield server


@pytest.fixture
def twilio(shared_twilio: TwilioTestServer) -> TwilioTestServer:
    shared_twilio.reset()
    return shared_twilio


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_fcm() -> AsyncIterator[FcmTestServer]:
    async with fcm_server() as server:
        yield server


@pytest.fixture
def fcm(shared_fcm: FcmTestServer) -> FcmTestServer:
    shared_fcm.reset()
    return shared_fcm


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_webpush() -> AsyncIterator[WebPushTestServer]:
    async with webpush_server() as server:
        yield server


@pytest.fixture
def webpush(shared_webpush: WebPushTestServer) -> WebPushTestServer:
    shared_webpush.reset()
    return shared_webpush


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_slack() -> AsyncIterator[SlackTestServer]:
    async with slack_server() as server:
        yield server


@pytest.fixture
def slack(shared_slack: SlackTestServer) -> SlackTestServer:
    shared_slack.reset()
    return shared_slack

"""Payloads the provider tests send."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

import pytest

from keel.notify.providers import EmailPayload

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

"""Local servers speaking each notification provider's protocol, for tests.

Every server listens on 127.0.0.1 (a free port), records what it received, parsed, and can
be told to fail the next requests in the provider's own error format::

    async with smtp_server() as smtp:
        provider = build_provider("smtp", smtp.settings(), {})
        await provider.send(payload)
        assert smtp.messages[0].data == payload.raw

    async with ses_server() as ses:
        ses.fail_next(1, status=429, retry_after=3)
        provider = build_provider("ses", ses.settings(), ses.credentials())

Servers: :func:`smtp_server` (aiosmtpd: AUTH, STARTTLS or implicit TLS with a certificate
made at start; configurable refusals), and HTTP servers for SES v2 (verifies each request's
SigV4 signature), Postmark, Twilio, FCM (with its OAuth token endpoint), Web Push (decrypts
each payload with the subscription's private key and checks the VAPID JWT) and Slack
webhooks. ``settings()`` and ``credentials()`` give what ``build_provider`` needs to reach
the server.
"""

from tests.support.provider_servers.email_apis import (
    PostmarkTestServer,
    SesTestServer,
    postmark_server,
    ses_server,
)
from tests.support.provider_servers.push import (
    FcmTestServer,
    WebPushTestServer,
    fcm_server,
    vapid_key_pair,
    webpush_server,
)
from tests.support.provider_servers.sms_chat import (
    SlackTestServer,
    TwilioTestServer,
    closed_port_url,
    slack_server,
    twilio_server,
)
from tests.support.provider_servers.smtp import SmtpTestServer, smtp_server

__all__ = [
    "FcmTestServer",
    "PostmarkTestServer",
    "SesTestServer",
    "SlackTestServer",
    "SmtpTestServer",
    "TwilioTestServer",
    "WebPushTestServer",
    "closed_port_url",
    "fcm_server",
    "postmark_server",
    "ses_server",
    "slack_server",
    "smtp_server",
    "twilio_server",
    "vapid_key_pair",
    "webpush_server",
]

"""Providers' webhooks, on SQLite and PostgreSQL: an SMS sent through Twilio (a local server
speaking its API) becomes ``delivered`` or ``failed`` when a correctly signed status callback
says so; an email sent through Postmark becomes ``bounced`` or ``complained`` (the address
suppressed), ``delivered``, ``opened`` or ``clicked`` when a webhook with the configured basic
credentials says so. Anything unproven is the same 401 and changes nothing; a report about a
message Keel does not know is a 200 that changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from keel.notify.service.webhooks import REFUSAL, twilio_signature
from tests.notify.conftest import Notify
from tests.notify.test_experiments import experiment, tracked_events
from tests.support.audit import audit_events
from tests.support.provider_servers import postmark_server, twilio_server
from tests.support.secrets_api import write
from tests.support.tenants import make_tenant_admin

PHONE = "+14155552671"
#: What the tests' ``settings`` fixture sets as ``KEEL_PUBLIC_URL``: the URL providers call.
PUBLIC_URL = "http://keel.test"
WEBHOOK_USER, WEBHOOK_PASSWORD = "postmark-hooks", "hook-password-5c2e"


def sign(auth_token: str, url: str, form: dict[str, str]) -> str:
    """Twilio's signature, written out here as Twilio documents it (not Keel's function)."""
    data = url + "".join(f"{name}{form[name]}" for name in sorted(form))
    return base64.b64encode(
        hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    ).decode()


async def put_provider(notify: Notify, name: str, kind: str, settings: Any, secret: str) -> None:
    answer = await notify.call(
        "PUT",
        f"/providers/{name}",
        json={"kind": kind, "settings": settings, "credentials_secret": f"secret/{secret}"},
    )
    assert answer.status_code == 201, answer.text


async def store(notify: Notify, path: str, fields: dict[str, str]) -> None:
    answer = await write(notify.client, notify.admin.api_key, path, fields)
    assert answer.status_code == 200, answer.text


def assert_refused(answer: httpx.Response) -> None:
    """The one refusal: 401 problem+json that names no part of what failed."""
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["detail"] == REFUSAL


# -- Twilio -----------------------------------------------------------------------------------


@dataclass
class SmsSent:
    notify: Notify
    auth_token: str
    url: str
    message_id: str
    sid: str

    def form(self, status: str, **extra: str) -> dict[str, str]:
        return {
            "MessageSid": self.sid,
            "SmsSid": self.sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": "AC" + "0" * 32,
            "To": PHONE,
            "From": "+15005550006",
            "ApiVersion": "2010-04-01",
            **extra,
        }

    async def post(
        self, form: dict[str, str], signature: str | None, url: str | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return await self.notify.client.post(
            (url or self.url).removeprefix(PUBLIC_URL), content=urlencode(form), headers=headers
        )

    async def callback(self, status: str, **extra: str) -> httpx.Response:
        form = self.form(status, **extra)
        return await self.post(form, sign(self.auth_token, self.url, form))


@pytest.fixture
async def sms(notify: Notify) -> AsyncIterator[SmsSent]:
    """One SMS sent through Twilio (its local server), ``sent`` with Twilio's ``SM…`` id."""
    await notify.publish(
        "code",
        {
            "default_locale": "en",
            "locales": {"en": {"sms": "Your code is {{ code }}"}},
            "sample_data": {"code": 1},
        },
    )
    async with twilio_server() as twilio:
        await store(notify, "notify/twilio", twilio.credentials())
        await put_provider(notify, "twilio", "twilio", twilio.settings(), "notify/twilio")
        answer = await notify.send(channel="sms", template="code", to=PHONE, data={"code": 7})
        assert answer.status_code == 202, answer.text
        await notify.deliver()
        sent = await notify.message(answer.json()["id"])
        assert sent["status"] == "sent"
        url = f"{PUBLIC_URL}/notify/v1/webhooks/{notify.admin.tenant_slug}/twilio"
        yield SmsSent(notify, twilio.auth_token, url, sent["id"], sent["provider_message_id"])


def test_the_twilio_signature_is_the_one_twilio_documents() -> None:
    """The test vector of Twilio's own request validator (twilio-python)."""
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, list(params.items())) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


async def test_a_signed_twilio_callback_marks_the_sms_delivered_in_its_history(
    sms: SmsSent,
) -> None:
    # A status Keel does not track (Twilio reports 'sent' too) is accepted and changes nothing.
    early = await sms.callback("sent")
    assert (early.status_code, early.json()) == (200, {"recorded": False})
    assert (await sms.notify.message(sms.message_id))["status"] == "sent"

    answer = await sms.callback("delivered")
    assert (answer.status_code, answer.json()) == (200, {"recorded": True})
    delivered = await sms.notify.message(sms.message_id)
    assert delivered["status"] == "delivered"
    assert [event["status"] for event in delivered["events"]] == ["queued", "sent", "delivered"]
    assert delivered["events"][-1]["detail"] == {
        "provider": "twilio",
        "provider_status": "delivered",
    }

    # Twilio signs the URL as configured: one written with its default port (a proxy's
    # doing) verifies too; the report is kept in the history, the status stays.
    form = sms.form("delivered")
    with_port = sms.url.replace(PUBLIC_URL, f"{PUBLIC_URL}:80")
    again = await sms.post(form, sign(sms.auth_token, with_port, form))
    assert (again.status_code, again.json()) == (200, {"recorded": True})
    assert (await sms.notify.message(sms.message_id))["status"] == "delivered"


async def test_an_undelivered_sms_is_failed_with_twilios_error_code(sms: SmsSent) -> None:
    answer = await sms.callback("undelivered", ErrorCode="30005")
    assert answer.status_code == 200, answer.text
    failed = await sms.notify.message(sms.message_id)
    assert failed["status"] == "failed"
    assert failed["events"][-1]["detail"]["error_code"] == "30005"
    # A later report cannot move a final status.
    await sms.callback("delivered")
    assert (await sms.notify.message(sms.message_id))["status"] == "failed"


async def test_a_wrongly_signed_twilio_callback_is_401_and_a_malformed_signed_one_422(
    sms: SmsSent,
) -> None:
    form = sms.form("delivered")
    good = sign(sms.auth_token, sms.url, form)
    tampered = {**form, "MessageStatus": "failed"}
    attempts = [
        (form, sign("not-the-auth-token", sms.url, form), None),  # another key
        (form, None, None),  # no signature
        (form, "", None),
        (form, "A" * 28, None),
        (tampered, good, None),  # a parameter changed after signing
        (form, sign(sms.auth_token, sms.url + "x", form), None),  # signed for another URL
        # The same good signature sent to another tenant, an unknown provider, or a provider
        # of a kind without webhooks: the same refusal, so names cannot be probed.
        (form, good, sms.url.replace(sms.notify.admin.tenant_slug, "no-such-tenant")),
        (form, good, sms.url.replace("/twilio", "/nope")),
        (form, good, sms.url.replace("/twilio", "/smtp")),
    ]
    for body, signature, url in attempts:
        assert_refused(await sms.post(body, signature, url))
    # A body that is not a form at all is no better.
    raw = await sms.notify.client.post(
        sms.url.removeprefix(PUBLIC_URL),
        json={"MessageSid": sms.sid, "MessageStatus": "delivered"},
        headers={"X-Twilio-Signature": good},
    )
    assert_refused(raw)

    unchanged = await sms.notify.message(sms.message_id)
    assert unchanged["status"] == "sent"
    assert [event["status"] for event in unchanged["events"]] == ["queued", "sent"]
    assert sms.auth_token not in raw.text

    # Correctly signed but without the message's id: the caller's fault, a 422.
    form = {"MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32}
    malformed = await sms.post(form, sign(sms.auth_token, sms.url, form))
    assert malformed.status_code == 422, malformed.text
    assert malformed.headers["content-type"].startswith("application/problem+json")
    assert (await sms.notify.message(sms.message_id))["status"] == "sent"


async def test_another_tenants_twilio_cannot_report_on_this_tenants_sms(
    sms: SmsSent, app: FastAPI
) -> None:
    """A tenant's provider, correctly signing its own callbacks, reaches only its tenant's
    messages: this tenant's ``MessageSid`` sent to it is an unknown message."""
    other = await make_tenant_admin(app)
    answer = await write(
        sms.notify.client,
        other.api_key,
        "notify/twilio",
        {"account_sid": "AC" + "9" * 32, "auth_token": "other-tenant-token"},
    )
    assert answer.status_code == 200, answer.text
    answer = await sms.notify.client.put(
        "/notify/v1/providers/twilio",
        headers=other.headers,
        json={
            "kind": "twilio",
            "settings": {"from_number": "+15005550006", "base_url": "http://127.0.0.1:9"},
            "credentials_secret": "secret/notify/twilio",
        },
    )
    assert answer.status_code == 201, answer.text
    other_url = sms.url.replace(sms.notify.admin.tenant_slug, other.tenant_slug)
    form = sms.form("undelivered")
    reported = await sms.post(form, sign("other-tenant-token", other_url, form), other_url)
    assert (reported.status_code, reported.json()) == (200, {"recorded": False})
    assert (await sms.notify.message(sms.message_id))["status"] == "sent"


# -- Postmark ---------------------------------------------------------------------------------


@dataclass
class EmailSent:
    notify: Notify
    path: str
    message_id: str
    postmark_id: str

    async def webhook(
        self,
        record: Any,
        auth: tuple[str, str] | None = (WEBHOOK_USER, WEBHOOK_PASSWORD),
    ) -> httpx.Response:
        if auth is None:
            return await self.notify.client.post(self.path, json=record)
        return await self.notify.client.post(self.path, json=record, auth=auth)

    def record(self, record_type: str, **fields: Any) -> dict[str, Any]:
        """A webhook body as Postmark sends it (its documented examples, trimmed)."""
        return {
            "RecordType": record_type,
            "ServerID": 23,
            "MessageStream": "outbound",
            "MessageID": self.postmark_id,
            "Recipient": "ada@example.com",
            "Tag": "",
            "Metadata": {},
            **fields,
        }


async def send_through_postmark(notify: Notify, to: str = "ada@example.com") -> EmailSent:
    """One email sent through Postmark (its local server) rather than SMTP, ``sent`` with
    Postmark's ``MessageID``; the webhook's basic credentials are in the same secret."""
    async with postmark_server() as postmark:
        credentials = {
            **postmark.credentials(),
            "webhook_username": WEBHOOK_USER,
            "webhook_password": WEBHOOK_PASSWORD,
        }
        await store(notify, "notify/postmark", credentials)
        assert (await notify.call("DELETE", "/providers/smtp")).status_code == 204
        await put_provider(notify, "postmark", "postmark", postmark.settings(), "notify/postmark")
        answer = await notify.send(template="welcome", to=to, data={"name": "Ada"})
        assert answer.status_code == 202, answer.text
        await notify.deliver()
        sent = await notify.message(answer.json()["id"])
        assert (sent["status"], sent["provider"]) == ("sent", "postmark")
        [accepted] = postmark.messages
        assert accepted["To"] == to
    path = f"/notify/v1/webhooks/{notify.admin.tenant_slug}/postmark"
    return EmailSent(notify, path, sent["id"], sent["provider_message_id"])


@pytest.fixture
async def email(notify: Notify) -> EmailSent:
    return await send_through_postmark(notify)


async def suppressions(notify: Notify) -> list[tuple[str, str, str | None]]:
    found = (await notify.call("GET", "/suppressions")).json()["suppressions"]
    return [(row["address"], row["reason"], row["category"]) for row in found]


async def test_a_postmark_hard_bounce_marks_the_email_bounced_and_suppresses_the_address(
    email: EmailSent, app: FastAPI
) -> None:
    bounce = email.record(
        "Bounce",
        ID=4323372036854775807,
        Type="HardBounce",
        TypeCode=1,
        Name="Hard bounce",
        Description="The server was unable to deliver your message (ex: unknown user).",
        Email="ada@example.com",
        Inactive=True,
        CanActivate=True,
    )
    answer = await email.webhook(bounce)
    assert (answer.status_code, answer.json()) == (200, {"recorded": True})

    bounced = await email.notify.message(email.message_id)
    assert bounced["status"] == "bounced"
    assert bounced["events"][-1]["detail"] == {"provider": "postmark", "type": "HardBounce"}
    assert await suppressions(email.notify) == [("ada@example.com", "bounce", None)]
    [event] = await audit_events(
        app, email.notify.admin.tenant_id, action_prefix="notify.suppression.add"
    )
    assert (event.actor_type, event.actor_id) == ("provider", "postmark")
    assert event.data["reason"] == "bounce"

    # A delivery report arriving late keeps the final status; the next send is suppressed.
    await email.webhook(email.record("Delivery", DeliveredAt="2024-05-01T10:00:00Z"))
    assert (await email.notify.message(email.message_id))["status"] == "bounced"
    again = await email.notify.send(template="welcome", to="ada@example.com", data={"name": "A"})
    assert again.json()["status"] == "suppressed"


async def test_a_postmark_soft_bounce_is_history_and_a_spam_complaint_suppresses_the_address(
    email: EmailSent,
) -> None:
    soft = await email.webhook(email.record("Bounce", Type="Transient", TypeCode=2))
    assert soft.status_code == 200, soft.text
    message = await email.notify.message(email.message_id)
    assert message["status"] == "sent"
    assert message["events"][-1]["status"] == "soft_bounced"
    assert await suppressions(email.notify) == []

    complaint = email.record(
        "SpamComplaint", ID=42, Type="SpamComplaint", TypeCode=512, Email="ada@example.com"
    )
    answer = await email.webhook(complaint)
    assert answer.status_code == 200, answer.text
    assert (await email.notify.message(email.message_id))["status"] == "complained"
    assert await suppressions(email.notify) == [("ada@example.com", "complaint", None)]


async def test_postmark_delivery_open_and_click_move_the_status_forward(email: EmailSent) -> None:
    await email.webhook(email.record("Delivery", DeliveredAt="2024-05-01T10:00:00Z"))
    assert (await email.notify.message(email.message_id))["status"] == "delivered"
    await email.webhook(email.record("Click", OriginalLink="https://acme.example/start"))
    await email.webhook(email.record("Open", FirstOpen=True, ReadSeconds=5))
    clicked = await email.notify.message(email.message_id)
    assert clicked["status"] == "clicked"  # an open after a click does not move it back
    assert [event["status"] for event in clicked["events"]] == [
        "queued",
        "sent",
        "delivered",
        "clicked",
        "opened",
    ]
    assert clicked["events"][3]["detail"]["url"] == "https://acme.example/start"


async def test_opens_and_clicks_postmark_tracked_convert_once_in_the_templates_experiment(
    notify: Notify,
) -> None:
    await experiment(notify)
    email = await send_through_postmark(notify)
    for record in ("Open", "Click", "Open", "Click"):
        answer = await email.webhook(email.record(record, OriginalLink="https://acme.example/x"))
        assert answer.status_code == 200, answer.text
    assert (await tracked_events(notify, "notify.open")) == 1
    assert (await tracked_events(notify, "notify.click")) == 1


async def test_postmark_webhooks_without_the_configured_basic_credentials_are_401_changing_nothing(
    email: EmailSent,
) -> None:
    bounce = email.record("Bounce", Type="HardBounce", TypeCode=1, Inactive=True)
    for auth in [
        None,
        (WEBHOOK_USER, "wrong-password"),
        ("someone", WEBHOOK_PASSWORD),
        (WEBHOOK_USER, ""),
    ]:
        assert_refused(await email.webhook(bounce, auth))
    for header in [
        "Bearer x",
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ]:
        answer = await email.notify.client.post(
            email.path, json=bounce, headers={"Authorization": header}
        )
        assert_refused(answer)

    assert (await email.notify.message(email.message_id))["status"] == "sent"
    assert await suppressions(email.notify) == []

    # A provider whose secret holds no webhook credentials refuses every webhook.
    await store(email.notify, "notify/postmark", {"server_token": "keel-test-postmark-token"})
    answer = await email.notify.call(
        "PUT",
        "/providers/postmark",
        json={
            "kind": "postmark",
            "settings": {"base_url": "http://127.0.0.1:9"},
            "credentials_secret": "secret/notify/postmark",
        },
    )
    assert answer.status_code == 200, answer.text
    assert_refused(await email.webhook(email.record("Delivery")))
    assert_refused(await email.webhook(email.record("Delivery"), ("", "")))
    assert (await email.notify.message(email.message_id))["status"] == "sent"


async def test_unknown_message_webhooks_are_200_and_malformed_ones_4xx_changing_nothing(
    email: EmailSent,
) -> None:
    bounce = {
        **email.record("Bounce", Type="HardBounce", TypeCode=1, Inactive=True),
        "MessageID": "00000000-0000-0000-0000-000000000000",
    }
    answer = await email.webhook(bounce)
    assert (answer.status_code, answer.json()) == (200, {"recorded": False})
    unknown_kind = await email.webhook(email.record("SubscriptionChange", SuppressSending=True))
    assert (unknown_kind.status_code, unknown_kind.json()) == (200, {"recorded": False})

    message = await email.notify.message(email.message_id)
    assert message["status"] == "sent"
    assert [event["status"] for event in message["events"]] == ["queued", "sent"]
    assert await suppressions(email.notify) == []

    # With good credentials, a body that is not JSON is a 400, one without the fields a 422.
    auth = (WEBHOOK_USER, WEBHOOK_PASSWORD)
    not_json = await email.notify.client.post(email.path, content=b"{nope", auth=auth)
    assert not_json.status_code == 400, not_json.text
    for body in ([1, 2], {"RecordType": "Bounce"}, {"RecordType": 1, "MessageID": "x"}):
        answer = await email.webhook(body)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
    for message_id in ("x" * 300, "a b", ""):
        answer = await email.webhook({"RecordType": "Delivery", "MessageID": message_id})
        assert answer.status_code == 422, answer.text
    assert (await email.notify.message(email.message_id))["status"] == "sent"

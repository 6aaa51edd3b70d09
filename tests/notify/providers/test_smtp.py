"""The SMTP provider against a real aiosmtpd server: plain, STARTTLS and implicit TLS."""

from __future__ import annotations

import asyncio

import pytest

from keel.notify.providers import EmailPayload, ErrorKind, ProviderError, build_provider
from keel.notify.providers.smtp import kind_for_reply
from tests.notify.providers.conftest import make_email
from tests.support.keel_process import free_port
from tests.support.provider_servers import smtp_server


async def test_the_raw_message_arrives_byte_for_byte_with_the_right_envelope(
    email: EmailPayload,
) -> None:
    async with smtp_server() as smtp:
        provider = build_provider("smtp", smtp.settings(), {})
        sent = await provider.send(email)
    [received] = smtp.messages
    assert received.data == email.raw
    assert received.mail_from == "no-reply@acme.test"
    assert received.rcpt_tos == ("user@example.com",)
    assert sent.provider == "smtp"
    assert sent.provider_message_id == "<welcome-1@acme.test>"


async def test_starttls_with_auth_logs_in_over_tls_trusting_the_given_ca(
    email: EmailPayload,
) -> None:
    async with smtp_server(security="starttls", username="mailer", password="s3cret-pw") as smtp:
        provider = build_provider("smtp", smtp.settings(), smtp.credentials())
        await provider.send(email)
    [received] = smtp.messages
    assert received.over_tls
    assert received.authenticated_as == "mailer"
    assert received.data == email.raw


async def test_implicit_tls_delivers(email: EmailPayload) -> None:
    async with smtp_server(security="tls") as smtp:
        provider = build_provider("smtp", smtp.settings(), {})
        await provider.send(email)
    assert smtp.messages[0].over_tls


async def test_an_untrusted_certificate_is_misconfigured_not_retryable(
    email: EmailPayload,
) -> None:
    async with smtp_server(security="starttls") as smtp:
        settings = smtp.settings()
        del settings["ca_file"]
        provider = build_provider("smtp", settings, {})
        with pytest.raises(ProviderError) as caught:
            await provider.send(email)
    assert caught.value.kind is ErrorKind.misconfigured
    assert smtp.messages == []


async def test_a_wrong_password_is_misconfigured_and_never_shown(email: EmailPayload) -> None:
    async with smtp_server(security="starttls", username="mailer", password="right-pw") as smtp:
        credentials = {"username": "mailer", "password": "wrong-password-123"}
        provider = build_provider("smtp", smtp.settings(), credentials)
        with pytest.raises(ProviderError) as caught:
            await provider.send(email)
    assert caught.value.kind is ErrorKind.misconfigured
    assert caught.value.status == 535
    assert smtp.failed_logins >= 1  # aiosmtplib tries each mechanism the server offers
    assert "wrong-password-123" not in str(caught.value)
    assert "wrong-password-123" not in repr(caught.value)


@pytest.mark.parametrize(
    ("reply", "stage", "kind"),
    [
        ("451 4.7.1 try later", "rcpt", ErrorKind.throttled),
        ("421 4.7.0 too many connections", "mail", ErrorKind.throttled),
        ("450 4.2.1 mailbox busy", "rcpt", ErrorKind.retryable),
        ("550 5.7.1 sender not allowed", "mail", ErrorKind.misconfigured),
        ("554 5.7.1 message refused", "data", ErrorKind.rejected),
    ],
)
async def test_server_replies_map_to_error_kinds(
    email: EmailPayload, reply: str, stage: str, kind: ErrorKind
) -> None:
    async with smtp_server() as smtp:
        smtp.fail_next(1, reply, at=stage)  # type: ignore[arg-type]
        provider = build_provider("smtp", smtp.settings(), {})
        with pytest.raises(ProviderError) as caught:
            await provider.send(email)
        assert caught.value.kind is kind
        assert caught.value.status == int(reply[:3])
        assert smtp.messages == []
        await provider.send(email)  # the failure was for one transaction only
    assert len(smtp.messages) == 1


async def test_an_unknown_mailbox_is_rejected() -> None:
    async with smtp_server() as smtp:
        smtp.reject_recipient("ghost@example.com")
        provider = build_provider("smtp", smtp.settings(), {})
        with pytest.raises(ProviderError) as caught:
            await provider.send(make_email("ghost@example.com"))
    assert caught.value.kind is ErrorKind.rejected
    assert caught.value.status == 550
    assert "no such user" in str(caught.value)


async def test_a_refused_connection_is_retryable(email: EmailPayload) -> None:
    provider = build_provider(
        "smtp", {"host": "127.0.0.1", "port": free_port(), "security": "none"}, {}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    assert caught.value.kind is ErrorKind.retryable


@pytest.mark.parametrize(
    ("code", "stage", "kind"),
    [
        (421, "connect", ErrorKind.throttled),
        (452, "rcpt", ErrorKind.throttled),
        (451, "data", ErrorKind.throttled),
        (454, "auth", ErrorKind.retryable),
        (535, "auth", ErrorKind.misconfigured),
        (530, "mail", ErrorKind.misconfigured),
        (550, "rcpt", ErrorKind.rejected),
        (551, "rcpt", ErrorKind.rejected),
        (553, "rcpt", ErrorKind.rejected),
        (550, "mail", ErrorKind.misconfigured),
        (552, "data", ErrorKind.rejected),
        (502, "connect", ErrorKind.misconfigured),
    ],
)
def test_kind_for_reply(code: int, stage: str, kind: ErrorKind) -> None:
    assert kind_for_reply(code, stage) is kind  # type: ignore[arg-type]


def test_credentials_without_tls_are_refused() -> None:
    from keel.notify.providers import ProviderConfigError

    with pytest.raises(ProviderConfigError, match="security"):
        build_provider(
            "smtp",
            {"host": "127.0.0.1", "port": 2525, "security": "none"},
            {"username": "mailer", "password": "pw-never-in-clear"},
        )


async def test_connections_are_kept_between_sends_and_a_stale_one_is_replaced(
    email: EmailPayload,
) -> None:
    async with smtp_server() as smtp:
        provider = build_provider("smtp", smtp.settings(), {})
        await provider.send(email)
        await provider.send(email)
        # The relay goes away and comes back: the kept connection is dead, the send is not.
        await asyncio.to_thread(smtp.stop)
        await asyncio.to_thread(smtp.start)
        await provider.send(email)
        await provider.aclose()
    assert len(smtp.messages) == 3
    assert smtp.connections == 2  # one for the first two sends, one after the restart

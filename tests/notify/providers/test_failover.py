"""Failover across a channel's providers, each a real client talking to a local server."""

from __future__ import annotations

import pytest

from keel.notify.providers import (
    EmailPayload,
    ErrorKind,
    FailoverExhausted,
    ProviderError,
    build_provider,
    send_with_failover,
)
from keel.notify.providers.base import Attempt, Provider
from tests.support.provider_servers import (
    PostmarkTestServer,
    SesTestServer,
    closed_port_url,
    smtp_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pair(ses: SesTestServer, postmark: PostmarkTestServer) -> list[Provider[EmailPayload]]:
    return [
        build_provider("ses", ses.settings(), ses.credentials(), name="ses-primary"),
        build_provider("postmark", postmark.settings(), postmark.credentials(), name="backup"),
    ]


async def close(providers: list[Provider[EmailPayload]]) -> None:
    for provider in providers:
        await provider.aclose()


async def test_a_server_error_fails_over_to_the_next_provider(
    ses: SesTestServer, postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    ses.fail_next(status=500)
    providers = pair(ses, postmark)
    sent = await send_with_failover(providers, email)
    await close(providers)
    assert sent.provider == "backup"
    assert sent.failed_over == ("ses-primary",)
    assert sent.failures == (Attempt("ses-primary", ErrorKind.retryable, 500, "InternalFailure"),)
    assert len(postmark.messages) == 1
    assert ses.messages == []


async def test_the_first_provider_that_works_is_the_only_one_called(
    ses: SesTestServer, postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    providers = pair(ses, postmark)
    sent = await send_with_failover(providers, email)
    await close(providers)
    assert (sent.provider, sent.failed_over) == ("ses-primary", ())
    assert postmark.requests == []


async def test_all_throttled_raises_exhausted_with_the_smallest_retry_after(
    ses: SesTestServer, postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    ses.fail_next(status=429, retry_after=9)
    postmark.fail_next(status=429, retry_after=2)
    providers = pair(ses, postmark)
    with pytest.raises(FailoverExhausted) as caught:
        await send_with_failover(providers, email)
    await close(providers)
    error = caught.value
    assert error.kind is ErrorKind.throttled
    assert error.retry_after == 2.0
    assert [(a.provider, a.kind, a.status) for a in error.attempts] == [
        ("ses-primary", ErrorKind.throttled, 429),
        ("backup", ErrorKind.throttled, 429),
    ]


async def test_mixed_failures_exhaust_as_retryable(
    ses: SesTestServer, postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    ses.fail_next(status=429, retry_after=4)
    postmark.fail_next(status=503)
    providers = pair(ses, postmark)
    with pytest.raises(FailoverExhausted) as caught:
        await send_with_failover(providers, email)
    await close(providers)
    assert (caught.value.kind, caught.value.retry_after) == (ErrorKind.retryable, 4.0)


async def test_a_rejected_recipient_stops_at_once(
    ses: SesTestServer, postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    ses.fail_next(status=400, code="MessageRejected", message="Address blacklisted.")
    providers = pair(ses, postmark)
    with pytest.raises(ProviderError) as caught:
        await send_with_failover(providers, email)
    await close(providers)
    assert not isinstance(caught.value, FailoverExhausted)
    assert (caught.value.provider, caught.value.kind) == ("ses-primary", ErrorKind.rejected)
    assert postmark.requests == []


async def test_bad_credentials_and_a_dead_host_fail_over_too(
    postmark: PostmarkTestServer, email: EmailPayload
) -> None:
    async with smtp_server(security="starttls", username="mailer", password="right") as smtp:
        providers: list[Provider[EmailPayload]] = [
            build_provider(
                "smtp",
                smtp.settings(),
                {"username": "mailer", "password": "wrong-smtp-password"},
                name="relay",
            ),
            build_provider(
                "ses",
                {"region": "eu-west-1", "endpoint_url": closed_port_url()},
                {"access_key_id": "AKID", "secret_access_key": "never-shown-secret"},
                name="ses-dead",
            ),
            build_provider("postmark", postmark.settings(), postmark.credentials()),
        ]
        sent = await send_with_failover(providers, email)
        await close(providers)
    assert sent.provider == "postmark"
    assert [(a.provider, a.kind) for a in sent.failures] == [
        ("relay", ErrorKind.misconfigured),
        ("ses-dead", ErrorKind.retryable),
    ]
    assert smtp.messages == []


async def test_every_credential_stays_out_of_the_exhausted_error(email: EmailPayload) -> None:
    async with smtp_server(security="starttls", username="mailer", password="right") as smtp:
        providers: list[Provider[EmailPayload]] = [
            build_provider(
                "smtp", smtp.settings(), {"username": "mailer", "password": "pw-secret-1"}
            ),
            build_provider(
                "postmark",
                {"base_url": closed_port_url()},
                {"server_token": "postmark-secret-2"},
            ),
        ]
        with pytest.raises(FailoverExhausted) as caught:
            await send_with_failover(providers, email)
        await close(providers)
    for secret in ("pw-secret-1", "postmark-secret-2"):
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
    assert caught.value.kind is ErrorKind.retryable


async def test_an_empty_provider_list_is_a_programming_error(email: EmailPayload) -> None:
    with pytest.raises(ValueError, match="at least one provider"):
        await send_with_failover([], email)

"""The SES provider against a local SES v2 server that verifies every SigV4 signature."""

from __future__ import annotations

import pytest

from keel.notify.providers import EmailPayload, ErrorKind, ProviderError, build_provider
from tests.support.provider_servers import SesTestServer, closed_port_url

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_the_raw_message_goes_signed_and_arrives_intact(
    ses: SesTestServer, email: EmailPayload
) -> None:
    provider = build_provider(
        "ses", ses.settings(configuration_set="transactional"), ses.credentials()
    )
    sent = await provider.send(email)
    await provider.aclose()
    [received] = ses.messages
    assert received.raw == email.raw
    assert received.to_addresses == ("user@example.com",)
    assert received.configuration_set == "transactional"
    assert ses.bad_signatures == 0
    assert sent.provider_message_id == "ses-1"


async def test_a_wrong_secret_key_is_refused_by_signature_and_is_misconfigured(
    ses: SesTestServer, email: EmailPayload
) -> None:
    credentials = ses.credentials() | {"secret_access_key": "not-the-secret-key-XYZ"}
    provider = build_provider("ses", ses.settings(), credentials)
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert ses.bad_signatures == 1
    assert ses.messages == []
    error = caught.value
    assert (error.kind, error.status, error.code) == (
        ErrorKind.misconfigured,
        403,
        "SignatureDoesNotMatch",
    )
    assert "not-the-secret-key-XYZ" not in str(error)
    assert "not-the-secret-key-XYZ" not in repr(error)


@pytest.mark.parametrize(
    ("status", "code", "message", "kind"),
    [
        (500, "InternalFailure", "internal", ErrorKind.retryable),
        (429, "TooManyRequestsException", "slow down", ErrorKind.throttled),
        (400, "LimitExceededException", "daily quota", ErrorKind.throttled),
        (400, "MessageRejected", "Address blacklisted.", ErrorKind.rejected),
        (
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check",
            ErrorKind.misconfigured,
        ),
        (400, "AccountSuspendedException", "suspended", ErrorKind.misconfigured),
        (400, "SendingPausedException", "paused", ErrorKind.misconfigured),
    ],
)
async def test_ses_errors_map_to_kinds(
    ses: SesTestServer, email: EmailPayload, status: int, code: str, message: str, kind: ErrorKind
) -> None:
    ses.fail_next(status=status, code=code, message=message)
    provider = build_provider("ses", ses.settings(), ses.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert (caught.value.kind, caught.value.code, caught.value.status) == (kind, code, status)


async def test_throttling_carries_retry_after(ses: SesTestServer, email: EmailPayload) -> None:
    ses.fail_next(status=429, retry_after=7)
    provider = build_provider("ses", ses.settings(), ses.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert caught.value.kind is ErrorKind.throttled
    assert caught.value.retry_after == 7.0


async def test_a_refused_connection_is_retryable(email: EmailPayload) -> None:
    provider = build_provider(
        "ses",
        {"region": "us-east-1", "endpoint_url": closed_port_url()},
        {"access_key_id": "AKID", "secret_access_key": "secret-key-never-shown"},
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(email)
    await provider.aclose()
    assert caught.value.kind is ErrorKind.retryable
    assert caught.value.__cause__ is None

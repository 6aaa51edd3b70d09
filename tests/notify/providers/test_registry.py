"""Building providers from stored configuration, and the error plumbing they share."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import httpx
import pytest

import keel.notify.providers as providers_package
from keel.notify.providers import (
    PROVIDER_KINDS,
    Channel,
    ErrorKind,
    ProviderConfigError,
    ProviderError,
    build_provider,
)
from keel.notify.providers._http import kind_for_status, redact, retry_after_of


def config_error(kind: str, settings: dict[str, object], credentials: dict[str, str]) -> str:
    with pytest.raises(ProviderConfigError) as caught:
        build_provider(kind, settings, credentials)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    message = config_error("carrier-pigeon", {}, {})
    assert message.startswith("unknown provider kind 'carrier-pigeon' (known: fcm, postmark,")


@pytest.mark.parametrize(
    ("kind", "settings", "expected"),
    [
        (
            "smtp",
            {"host": "mx.acme.test", "port": 70000},
            "smtp settings: port: Input should be less than or equal to 65535",
        ),
        ("smtp", {"port": 25}, "smtp settings: host: Field required"),
        (
            "smtp",
            {"host": "mx.acme.test", "security": "ssl"},
            "smtp settings: security: Input should be 'none', 'starttls' or 'tls'",
        ),
        (
            "smtp",
            {"host": "mx.acme.test", "colour": "blue"},
            "smtp settings: colour: Extra inputs are not permitted",
        ),
        ("ses", {"region": "Mars"}, "ses settings: region: String should match pattern"),
        (
            "twilio",
            {"from_number": "+15005550006", "messaging_service_sid": "MG" + "0" * 32},
            "twilio settings: (all): Value error, set exactly one of from_number and "
            "messaging_service_sid",
        ),
        (
            "webpush",
            {"subject": "ops@acme.test"},
            "webpush settings: subject: Value error, must be a mailto: address",
        ),
        ("postmark", {"base_url": "ftp://x"}, "postmark settings: base_url: Value error"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_field(
    kind: str, settings: dict[str, object], expected: str
) -> None:
    credentials = {
        "smtp": {},
        "ses": {"access_key_id": "AKID", "secret_access_key": "s"},
        "twilio": {"account_sid": "AC1", "auth_token": "t"},
        "webpush": {"vapid_private_key": "x"},
        "postmark": {"server_token": "t"},
    }[kind]
    assert config_error(kind, settings, credentials).startswith(expected)


@pytest.mark.parametrize(
    ("kind", "settings", "credentials", "expected", "secret"),
    [
        (
            "ses",
            {"region": "eu-west-1"},
            {"access_key_id": "AKID"},
            "ses credentials: secret_access_key: Field required",
            None,
        ),
        (
            "slack",
            {},
            {"webhook_url": "hooks.slack.test/services/very-secret-part"},
            "slack credentials: webhook_url: Value error, must be an http:// or https:// URL",
            "very-secret-part",
        ),
        (
            "webpush",
            {"subject": "mailto:ops@acme.test"},
            {"vapid_private_key": "not-a-key-but-secret"},
            "webpush credentials: vapid_private_key: Value error, is not a P-256 private key",
            "not-a-key-but-secret",
        ),
        (
            "smtp",
            {"host": "mx.acme.test"},
            {"username": "mailer"},
            "smtp credentials: (all): Value error, username and password go together",
            None,
        ),
        (
            "postmark",
            {},
            {"server_token": "t", "api_key": "stray-secret-value"},
            "postmark credentials: api_key: Extra inputs are not permitted",
            "stray-secret-value",
        ),
    ],
)
def test_bad_credentials_are_refused_without_repeating_them(
    kind: str,
    settings: dict[str, object],
    credentials: dict[str, str],
    expected: str,
    secret: str | None,
) -> None:
    message = config_error(kind, settings, credentials)
    assert message.startswith(expected)
    if secret:
        assert secret not in message


def test_build_provider_names_the_provider_and_its_kind() -> None:
    provider = build_provider(
        "ses",
        {"region": "eu-west-1"},
        {"access_key_id": "AKID", "secret_access_key": "s"},
        name="ses-eu",
    )
    assert (provider.name, provider.kind, provider.channel) == ("ses-eu", "ses", Channel.email)


def test_provider_kinds_describe_channel_settings_and_credentials() -> None:
    assert {kind: spec.channel for kind, spec in PROVIDER_KINDS.items()} == {
        "smtp": Channel.email,
        "ses": Channel.email,
        "postmark": Channel.email,
        "twilio": Channel.sms,
        "fcm": Channel.push,
        "webpush": Channel.push,
        "slack": Channel.chat,
    }
    ses = PROVIDER_KINDS["ses"]
    assert [(f.name, f.required) for f in ses.credential_fields] == [
        ("access_key_id", True),
        ("secret_access_key", True),
        ("session_token", False),
    ]
    smtp_settings = {f.name: f.required for f in PROVIDER_KINDS["smtp"].settings_fields}
    assert smtp_settings["host"] is True
    assert smtp_settings["port"] is False
    for spec in PROVIDER_KINDS.values():
        json.dumps(spec.settings_schema())  # documentable as it is


def test_the_package_exports_exactly_its_public_names() -> None:
    assert sorted(providers_package.__all__) == [
        "Attempt",
        "Channel",
        "ChatPayload",
        "ConfigField",
        "EmailPayload",
        "ErrorKind",
        "FailoverExhausted",
        "FcmTarget",
        "PROVIDER_KINDS",
        "Payload",
        "Provider",
        "ProviderConfigError",
        "ProviderError",
        "ProviderKind",
        "PushPayload",
        "PushTarget",
        "Sent",
        "SmsPayload",
        "WebPushTarget",
        "build_provider",
        "send_with_failover",
    ]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ErrorKind.retryable),
        (503, ErrorKind.retryable),
        (408, ErrorKind.retryable),
        (429, ErrorKind.throttled),
        (401, ErrorKind.misconfigured),
        (403, ErrorKind.misconfigured),
        (400, ErrorKind.misconfigured),
        (404, ErrorKind.rejected),
        (410, ErrorKind.rejected),
    ],
)
def test_kind_for_status(status: int, kind: ErrorKind) -> None:
    assert kind_for_status(status) is kind


def test_retry_after_reads_seconds_and_http_dates() -> None:
    seconds = httpx.Response(429, headers={"Retry-After": "12"})
    assert retry_after_of(seconds) == 12.0
    date = httpx.Response(429, headers={"Retry-After": formatdate(time.time() + 60, usegmt=True)})
    assert 55 <= (retry_after_of(date) or 0) <= 60
    assert retry_after_of(httpx.Response(429)) is None


def test_redact_hides_every_secret_and_keeps_one_bounded_line() -> None:
    text = redact("token abc-123 refused\nfor abc-123 at line 2" + "x" * 500, ["abc-123"])
    assert "abc-123" not in text
    assert "\n" not in text
    assert len(text) <= 300


def test_provider_error_repr_and_str_carry_the_facts() -> None:
    error = ProviderError(
        "HTTP 429", provider="ses-eu", kind=ErrorKind.throttled, status=429, retry_after=3.0
    )
    assert str(error) == "ses-eu: HTTP 429"
    assert "kind='throttled'" in repr(error)
    assert "retry_after=3.0" in repr(error)

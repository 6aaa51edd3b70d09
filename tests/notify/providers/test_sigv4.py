"""The SigV4 signer reproduces AWS's published test suite signatures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keel.notify.providers.sigv4 import AwsCredentials, canonical_request, sign_headers

# AWS Signature Version 4 test suite (AWS General Reference): credentials and time.
SUITE = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SCOPE = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


@pytest.mark.parametrize(
    ("name", "method", "url", "expected"),
    [
        (
            "get-vanilla",
            "GET",
            "https://example.amazonaws.com/",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "post-vanilla",
            "POST",
            "https://example.amazonaws.com/",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
    ],
)
def test_signature_matches_the_aws_test_suite(
    name: str, method: str, url: str, expected: str
) -> None:
    headers = sign_headers(
        SUITE,
        method=method,
        url=url,
        headers={},
        body=b"",
        region="us-east-1",
        service="service",
        now=SUITE_TIME,
    )
    assert headers["X-Amz-Date"] == "20150830T123600Z"
    assert headers["Authorization"] == (
        f"AWS4-HMAC-SHA256 {SCOPE}, SignedHeaders=host;x-amz-date, Signature={expected}"
    )


def test_get_vanilla_canonical_request_is_the_published_one() -> None:
    canonical, signed = canonical_request(
        "GET",
        "https://example.amazonaws.com/",
        {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    assert signed == "host;x-amz-date"
    assert canonical == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_temporary_credentials_sign_their_session_token() -> None:
    credentials = AwsCredentials("AKIDEXAMPLE", "secret", session_token="session-token")
    headers = sign_headers(
        credentials,
        method="POST",
        url="https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails",
        headers={"Content-Type": "application/json"},
        body=b"{}",
        region="eu-west-1",
        service="ses",
        now=SUITE_TIME,
    )
    assert headers["X-Amz-Security-Token"] == "session-token"
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"
        in (headers["Authorization"])
    )


def test_credentials_repr_hides_the_secret_key() -> None:
    assert SUITE.secret_access_key not in repr(SUITE)

"""RFC 9421 signing with HTTPSignatureAuth and verification with SignatureVerifier."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from keel_client.http import (
    BaseAPIClient,
    ClientError,
    HTTPSignatureAuth,
    SignatureVerificationError,
    SignatureVerifier,
)
from tests.client.http.faultserver import SIGNING_KEYS, FaultServer

SECRET = SIGNING_KEYS["test-key"]
URL = "https://partner.example/v1/payments?currency=EUR"


def signed_request(*, clock: float | None = None, body: object = None) -> httpx.Request:
    auth = HTTPSignatureAuth(
        key_id="test-key", secret=SECRET, clock=(lambda: clock) if clock else time.time
    )
    request = httpx.Request(
        "POST",
        URL,
        json=body if body is not None else {"amount": 1250},
        headers={"X-Request-ID": "req-7"},
    )
    auth.sign(request)
    return request


def verify(request: httpx.Request, *, body: bytes | None = None, url: str | None = None) -> object:
    return SignatureVerifier(SIGNING_KEYS).verify(
        method=request.method,
        url=url or str(request.url),
        headers=request.headers.multi_items(),
        body=request.content if body is None else body,
    )


class TestRoundTrip:
    async def test_server_verifies_what_the_client_signed(self, fault_server: FaultServer) -> None:
        auth = HTTPSignatureAuth(key_id="test-key", secret=SECRET)
        async with BaseAPIClient(fault_server.url, auth=auth) as api:
            response = await api.post("/signed?x=1", json={"amount": 1250})
        covered = response.json()["covered"]
        assert response.json()["key_id"] == "test-key"
        for component in ('"@method"', '"@authority"', '"@target-uri"', '"content-digest"'):
            assert component in covered
        assert '"x-request-id"' in covered
        assert '"content-type"' in covered

    async def test_wrong_secret_is_rejected_by_the_server(self, fault_server: FaultServer) -> None:
        auth = HTTPSignatureAuth(key_id="test-key", secret=b"not-the-shared-secret")
        async with BaseAPIClient(fault_server.url, auth=auth) as api:
            with pytest.raises(ClientError) as caught:
                await api.post("/signed", json={"amount": 1})
        assert caught.value.status == 401
        assert caught.value.title == "Invalid signature"

    def test_verifier_returns_what_was_covered(self) -> None:
        verified = verify(signed_request())
        assert verified.key_id == "test-key"  # type: ignore[attr-defined]
        assert verified.body == signed_request().content  # type: ignore[attr-defined]
        assert verified.expires is not None  # type: ignore[attr-defined]


class TestTamperDetection:
    def test_changed_body(self) -> None:
        request = signed_request()
        tampered = json.dumps({"amount": 999999}).encode()
        with pytest.raises(SignatureVerificationError, match=r"[Dd]igest"):
            verify(request, body=tampered)

    def test_changed_covered_header(self) -> None:
        request = signed_request()
        request.headers["X-Request-ID"] = "req-8"
        with pytest.raises(SignatureVerificationError):
            verify(request)

    def test_changed_query(self) -> None:
        request = signed_request()
        with pytest.raises(SignatureVerificationError):
            verify(request, url=URL.replace("EUR", "USD"))

    def test_changed_method(self) -> None:
        request = signed_request()
        with pytest.raises(SignatureVerificationError):
            SignatureVerifier(SIGNING_KEYS).verify(
                method="PUT",
                url=str(request.url),
                headers=request.headers.multi_items(),
                body=request.content,
            )

    def test_expired_signature(self) -> None:
        request = signed_request(clock=time.time() - 3600)
        with pytest.raises(SignatureVerificationError, match=r"past|age"):
            verify(request)

    def test_signature_from_the_future(self) -> None:
        request = signed_request(clock=time.time() + 600)
        with pytest.raises(SignatureVerificationError, match="future"):
            verify(request)

    def test_unknown_key(self) -> None:
        request = signed_request()
        with pytest.raises(SignatureVerificationError):
            SignatureVerifier({"other-key": SECRET}).verify(
                method="POST", url=URL, headers=request.headers.multi_items(), body=request.content
            )

    def test_missing_signature(self) -> None:
        with pytest.raises(SignatureVerificationError) as caught:
            SignatureVerifier(SIGNING_KEYS).verify(method="GET", url=URL, headers={})
        assert caught.value.status == 401

    def test_body_added_to_a_bodiless_signed_request(self) -> None:
        request = httpx.Request("GET", URL)
        HTTPSignatureAuth(key_id="test-key", secret=SECRET).sign(request)
        verify(request)  # the bodiless request itself verifies
        with pytest.raises(SignatureVerificationError, match="Content-Digest"):
            verify(request, body=b'{"smuggled": true}')

    def test_signature_too_narrow_for_the_verifier(self) -> None:
        auth = HTTPSignatureAuth(key_id="test-key", secret=SECRET, covered_components=("@method",))
        request = httpx.Request("GET", URL)
        auth.sign(request)
        with pytest.raises(SignatureVerificationError, match="not covered"):
            verify(request)

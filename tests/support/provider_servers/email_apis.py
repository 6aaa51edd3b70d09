"""The HTTP e-mail providers: SES v2 (each request's SigV4 signature verified) and Postmark."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from keel.notify.providers.sigv4 import signature
from tests.support.provider_servers.http import (
    HttpTestServer,
    ReceivedRequest,
    json_response,
    serving,
)

# SES ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SesMessage:
    raw: bytes
    """``Content.Raw.Data`` decoded."""
    to_addresses: tuple[str, ...]
    configuration_set: str | None


class SesTestServer(HttpTestServer):
    """SES v2 ``SendEmail``; refuses any request whose SigV4 signature does not verify."""

    def __init__(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        super().__init__()
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.messages: list[SesMessage] = []
        self.bad_signatures = 0

    def reset(self) -> None:
        super().reset()
        self.bad_signatures = 0

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"region": self.region, "endpoint_url": self.url, "timeout": 5} | overrides

    def credentials(self) -> dict[str, str]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        error_type = str(
            code or ("TooManyRequestsException" if status == 429 else "InternalFailure")
        )
        return json_response(
            {"message": message},
            status,
            {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.ses/"},
        )

    def signature_matches(self, request: ReceivedRequest) -> bool:
        """Recompute the request's signature from what arrived, with the shared secret."""
        authorization = request.headers.get("authorization", "")
        algorithm, _, fields = authorization.partition(" ")
        parts = dict(part.strip().split("=", 1) for part in fields.split(",") if "=" in part)
        credential = parts.get("Credential", "").split("/")
        amz_date = request.headers.get("x-amz-date", "")
        if (
            algorithm != "AWS4-HMAC-SHA256"
            or len(credential) != 5
            or credential[0] != self.access_key_id
            or credential[1:] != [amz_date[:8], self.region, "ses", "aws4_request"]
        ):
            return False
        signed = parts.get("SignedHeaders", "").split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return False
        expected, _ = signature(
            self.secret_access_key,
            method=request.method,
            url=f"{self.url}{request.path}?{request.query}",
            headers={name: request.headers.get(name, "") for name in signed},
            payload_hash=hashlib.sha256(request.body).hexdigest(),
            amz_date=amz_date,
            region=self.region,
            service="ses",
        )
        return hmac.compare_digest(expected, parts.get("Signature", ""))

    async def accept(self, request: ReceivedRequest) -> Response:
        if not self.signature_matches(request):
            self.bad_signatures += 1
            return self.error_response(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if request.method != "POST" or request.path != "/v2/email/outbound-emails":
            return self.error_response(404, "NotFoundException", "Unknown operation")
        body = request.json()
        self.messages.append(
            SesMessage(
                raw=base64.b64decode(body["Content"]["Raw"]["Data"]),
                to_addresses=tuple(body.get("Destination", {}).get("ToAddresses", [])),
                configuration_set=body.get("ConfigurationSetName"),
            )
        )
        return json_response({"MessageId": f"ses-{len(self.messages)}"})


@asynccontextmanager
async def ses_server(
    *,
    access_key_id: str = "AKIDKEELTEST",
    secret_access_key: str = "keel-test-secret-access-key/0123456789",  # noqa: S107
    region: str = "us-east-1",
) -> AsyncIterator[SesTestServer]:
    server = SesTestServer(access_key_id, secret_access_key, region)
    async with serving(server):
        yield server


# Postmark -----------------------------------------------------------------------------


class PostmarkTestServer(HttpTestServer):
    def __init__(self, server_token: str) -> None:
        super().__init__()
        self.server_token = server_token
        self.messages: list[dict[str, Any]] = []

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"base_url": self.url, "timeout": 5} | overrides

    def credentials(self) -> dict[str, str]:
        return {"server_token": self.server_token}

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        return json_response(
            {"ErrorCode": int(code) if code is not None else 0, "Message": message}, status
        )

    async def accept(self, request: ReceivedRequest) -> Response:
        token = request.headers.get("x-postmark-server-token", "")
        if not hmac.compare_digest(token.encode(), self.server_token.encode()):
            return self.error_response(401, 10, "Request does not contain a valid Server token.")
        if request.path != "/email":
            return self.error_response(404, None, "Not found")
        message = request.json()
        self.messages.append(message)
        return json_response(
            {
                "To": message.get("To"),
                "SubmittedAt": datetime.datetime.now(datetime.UTC).isoformat(),
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            }
        )


@asynccontextmanager
async def postmark_server(
    *,
    server_token: str = "keel-test-postmark-token",  # noqa: S107
) -> AsyncIterator[PostmarkTestServer]:
    server = PostmarkTestServer(server_token)
    async with serving(server):
        yield server

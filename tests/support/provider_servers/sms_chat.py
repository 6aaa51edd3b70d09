"""SMS and chat: Twilio and Slack webhooks; and an address nothing listens on."""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Response

from tests.support.keel_process import free_port
from tests.support.provider_servers.http import (
    HttpTestServer,
    ReceivedRequest,
    json_response,
    serving,
)

# Twilio -------------------------------------------------------------------------------


class TwilioTestServer(HttpTestServer):
    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, str]] = []

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"base_url": self.url, "from_number": "+15005550006", "timeout": 5} | overrides

    def credentials(self) -> dict[str, str]:
        return {"account_sid": self.account_sid, "auth_token": self.auth_token}

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        return json_response(
            {
                "code": int(code) if code is not None else 20500,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status,
        )

    async def accept(self, request: ReceivedRequest) -> Response:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Basic {expected}".encode()):
            return self.error_response(401, 20003, "Authenticate")
        if request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return self.error_response(404, 20404, "The requested resource was not found")
        form = request.form()
        self.messages.append(form)
        sid = "SM" + secrets.token_hex(16)
        return json_response({"sid": sid, "status": "queued", "to": form.get("To")}, 201)


@asynccontextmanager
async def twilio_server(
    *,
    account_sid: str = "AC" + "0" * 32,
    auth_token: str = "keel-test-twilio-auth-token",  # noqa: S107
) -> AsyncIterator[TwilioTestServer]:
    server = TwilioTestServer(account_sid, auth_token)
    async with serving(server):
        yield server


# Slack --------------------------------------------------------------------------------


class SlackTestServer(HttpTestServer):
    def __init__(self) -> None:
        super().__init__()
        self.path = f"/services/T0KEEL/B0KEEL/{secrets.token_urlsafe(18)}"
        self.messages: list[dict[str, Any]] = []

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{self.path}"

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"timeout": 5} | overrides

    def credentials(self) -> dict[str, str]:
        return {"webhook_url": self.webhook_url}

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        default = "rate_limited" if status == 429 else "internal_error"
        return Response(str(code or default), status_code=status, media_type="text/plain")

    async def accept(self, request: ReceivedRequest) -> Response:
        if request.path != self.path:
            return self.error_response(404, "no_service", "")
        try:
            message = request.json()
        except ValueError:
            return self.error_response(400, "invalid_payload", "")
        if not message.get("text") and not message.get("blocks"):
            return self.error_response(400, "no_text", "")
        self.messages.append(message)
        return Response("ok", media_type="text/plain")


@asynccontextmanager
async def slack_server() -> AsyncIterator[SlackTestServer]:
    server = SlackTestServer()
    async with serving(server):
        yield server


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"

"""Email through Postmark's ``/email`` API.

Postmark builds and signs the message itself, so it gets the parts, not ``raw``: subject,
text, HTML and our extra headers (the RFC 8058 unsubscribe pair among them) as its
``Headers`` list. Errors carry Postmark's ``ErrorCode``; :func:`explain_postmark` maps them.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings, check_base_url
from keel.notify.providers._http import ProviderHttp, Refusal, json_body
from keel.notify.providers.base import Channel, EmailPayload, ErrorKind, Sent, require_payload

#: Headers Postmark writes itself from the request's fields; sending them again is refused.
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "content-type", "mime-version", "dkim-signature"}
)

#: Postmark's ErrorCode values (https://postmarkapp.com/developer/api/overview#error-codes).
_REJECTED_CODES = frozenset({406})  # inactive recipient: bounced, complained or suppressed
_MISCONFIGURED_CODES = frozenset({10, 400, 401, 405, 412})  # token, sender, account state


class PostmarkSettings(ProviderSettings):
    base_url: str = "https://api.postmarkapp.com"
    message_stream: str | None = Field(default=None, min_length=1)
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)


class PostmarkCredentials(ProviderCredentials):
    server_token: SecretStr = Field(min_length=1)
    #: The HTTP basic credentials configured on Postmark's webhooks, which Keel's webhook
    #: endpoint checks (``keel.notify.service.webhooks``); sending does not use them.
    webhook_username: SecretStr | None = Field(default=None, min_length=1)
    webhook_password: SecretStr | None = Field(default=None, min_length=1)


def explain_postmark(response: httpx.Response) -> Refusal:
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("ErrorCode"), int):
        return Refusal()
    code: int = body["ErrorCode"]
    kind: ErrorKind | None = None
    if code in _REJECTED_CODES:
        kind = ErrorKind.rejected
    elif code in _MISCONFIGURED_CODES:
        kind = ErrorKind.misconfigured
    message = body.get("Message")
    return Refusal(kind=kind, code=str(code), detail=str(message) if message else None)


class PostmarkProvider:
    """Sends an email's parts through Postmark.

    >>> PostmarkProvider("postmark", PostmarkSettings(), PostmarkCredentials(server_token=t))
    """

    kind = "postmark"
    channel = Channel.email

    def __init__(
        self,
        name: str,
        settings: PostmarkSettings,
        credentials: PostmarkCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._token = credentials.server_token.get_secret_value()
        self._http = ProviderHttp(name, timeout=settings.timeout, secrets=(self._token,), http=http)

    async def send(self, payload: EmailPayload) -> Sent:
        require_payload(self, payload, EmailPayload)
        message: dict[str, Any] = {
            "From": payload.sender,
            "To": payload.recipient,
            "Subject": payload.subject,
            "TextBody": payload.text,
            "Headers": [
                {"Name": name, "Value": value}
                for name, value in payload.headers.items()
                if name.lower() not in _OWN_HEADERS
            ],
        }
        if payload.html is not None:
            message["HtmlBody"] = payload.html
        if self.settings.message_stream:
            message["MessageStream"] = self.settings.message_stream
        response = await self._http.request(
            "POST",
            f"{self.settings.base_url}/email",
            headers={"Accept": "application/json", "X-Postmark-Server-Token": self._token},
            json_content=message,
            explain=explain_postmark,
        )
        answer = json_body(response)
        message_id = answer.get("MessageID") if isinstance(answer, dict) else None
        return Sent(self.name, str(message_id) if message_id else None)

    async def aclose(self) -> None:
        await self._http.aclose()

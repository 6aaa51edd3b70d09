"""Chat messages through a Slack-compatible incoming webhook.

The webhook URL is the credential (whoever has it can post), so it is held as a secret and
never appears in an error. Slack answers ``200 ok``; a webhook that was removed answers
404/410 (``no_service``, ``channel_is_archived``): that is our configuration, not a
recipient, so those are ``misconfigured`` here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings, check_base_url
from keel.notify.providers._http import ProviderHttp, Refusal
from keel.notify.providers.base import Channel, ChatPayload, ErrorKind, Sent, require_payload


class SlackSettings(ProviderSettings):
    timeout: float = Field(default=10.0, gt=0, le=120)


class SlackCredentials(ProviderCredentials):
    webhook_url: SecretStr = Field(min_length=1)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        check_base_url(value.get_secret_value())
        return value


def explain_slack(response: httpx.Response) -> Refusal:
    """Slack's error answers are one plain-text word: ``no_service``, ``invalid_payload``."""
    code = response.text.strip()[:64] or None
    status = response.status_code
    kind = ErrorKind.misconfigured if 400 <= status < 500 and status != 429 else None
    return Refusal(kind=kind, code=code)


class SlackProvider:
    """Posts to a Slack-compatible incoming webhook.

    >>> SlackProvider("ops-channel", SlackSettings(), SlackCredentials(webhook_url=url))
    """

    kind = "slack"
    channel = Channel.chat

    def __init__(
        self,
        name: str,
        settings: SlackSettings,
        credentials: SlackCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._webhook_url = credentials.webhook_url.get_secret_value()
        self._http = ProviderHttp(
            name,
            timeout=settings.timeout,
            # The path alone (…/services/T/B/secret) is as good as the URL: redact both.
            secrets=(self._webhook_url, urlsplit(self._webhook_url).path.strip("/")),
            http=http,
        )

    async def send(self, payload: ChatPayload) -> Sent:
        require_payload(self, payload, ChatPayload)
        message: dict[str, Any] = {"text": payload.text}
        if payload.blocks is not None:
            message["blocks"] = payload.blocks
        await self._http.request(
            "POST", self._webhook_url, json_content=message, explain=explain_slack
        )
        return Sent(self.name, None)

    async def aclose(self) -> None:
        await self._http.aclose()

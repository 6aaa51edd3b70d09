"""Email through Amazon SES v2 (``SendEmail`` with a raw message), signed with SigV4.

SES sends ``payload.raw`` unchanged, so our DKIM signature and unsubscribe headers arrive
as built. Its errors name their type in ``x-amzn-ErrorType`` (``MessageRejected:http://...``)
or the body's ``__type``; :func:`explain_ses` maps them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings, check_base_url
from keel.notify.providers._http import ProviderHttp, Refusal, json_body
from keel.notify.providers.base import Channel, EmailPayload, ErrorKind, Sent, require_payload
from keel.notify.providers.sigv4 import AwsCredentials, sign_headers

SEND_PATH = "/v2/email/outbound-emails"

_THROTTLED = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "LimitExceededException"}
)
_MISCONFIGURED = frozenset(
    {
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "AccessDeniedException",
        "IncompleteSignature",
        "ExpiredTokenException",
    }
)


class SesSettings(ProviderSettings):
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$", description="e.g. eu-west-1")
    endpoint_url: str | None = Field(
        default=None, description="Default https://email.{region}.amazonaws.com"
    )
    configuration_set: str | None = Field(default=None, min_length=1)
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @property
    def base_url(self) -> str:
        return self.endpoint_url or f"https://email.{self.region}.amazonaws.com"


class SesCredentials(ProviderCredentials):
    access_key_id: SecretStr = Field(min_length=1)
    secret_access_key: SecretStr = Field(min_length=1)
    session_token: SecretStr | None = Field(default=None, min_length=1)


def error_type(response: httpx.Response) -> str | None:
    """The AWS error type's short name, from the header or the body."""
    raw = response.headers.get("x-amzn-errortype")
    body = json_body(response)
    if not raw and isinstance(body, dict):
        raw = body.get("__type") or body.get("code")
    if not raw:
        return None
    # "MessageRejected:http://internal.amazon.com/..." or "com.amazonaws...#MessageRejected"
    return str(raw).split(":", 1)[0].rsplit("#", 1)[-1]


def explain_ses(response: httpx.Response) -> Refusal:
    code = error_type(response)
    body = json_body(response)
    detail = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("Message")
        detail = str(message) if message else None
    kind: ErrorKind | None = None
    if code in _THROTTLED:
        kind = ErrorKind.throttled
    elif code in _MISCONFIGURED:
        kind = ErrorKind.misconfigured
    elif code == "MessageRejected":
        # The sandbox's "Email address is not verified" is our account, not the recipient.
        not_verified = detail is not None and "not verified" in detail.lower()
        kind = ErrorKind.misconfigured if not_verified else ErrorKind.rejected
    elif code == "BadRequestException":
        kind = ErrorKind.misconfigured
    return Refusal(kind=kind, code=code, detail=detail)


class SesProvider:
    """Sends the raw message through SES v2.

    >>> SesProvider("ses-eu", SesSettings(region="eu-west-1"), credentials, http=shared)
    """

    kind = "ses"
    channel = Channel.email

    def __init__(
        self,
        name: str,
        settings: SesSettings,
        credentials: SesCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        token = credentials.session_token
        self._credentials = AwsCredentials(
            credentials.access_key_id.get_secret_value(),
            credentials.secret_access_key.get_secret_value(),
            token.get_secret_value() if token else None,
        )
        self._http = ProviderHttp(
            name,
            timeout=settings.timeout,
            secrets=(
                self._credentials.secret_access_key,
                self._credentials.session_token or "",
            ),
            http=http,
        )

    async def send(self, payload: EmailPayload) -> Sent:
        require_payload(self, payload, EmailPayload)
        request: dict[str, Any] = {
            "Content": {"Raw": {"Data": base64.b64encode(payload.raw).decode("ascii")}},
            "Destination": {"ToAddresses": [payload.recipient]},
        }
        if self.settings.configuration_set:
            request["ConfigurationSetName"] = self.settings.configuration_set
        body = json.dumps(request).encode()
        url = self.settings.base_url + SEND_PATH
        headers = sign_headers(
            self._credentials,
            method="POST",
            url=url,
            headers={"Content-Type": "application/json"},
            body=body,
            region=self.settings.region,
            service="ses",
        )
        response = await self._http.request(
            "POST", url, headers=headers, content=body, explain=explain_ses
        )
        answer = json_body(response)
        message_id = answer.get("MessageId") if isinstance(answer, dict) else None
        return Sent(self.name, str(message_id) if message_id else None)

    async def aclose(self) -> None:
        await self._http.aclose()

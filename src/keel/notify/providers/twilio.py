"""SMS through Twilio's Messages API (form-encoded, HTTP basic auth).

Twilio's errors carry a numeric ``code`` (https://www.twilio.com/docs/api/errors);
:func:`explain_twilio` maps the ones that name the recipient to ``rejected``.
"""

from __future__ import annotations

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings, check_base_url
from keel.notify.providers._http import ProviderHttp, Refusal, json_body
from keel.notify.providers.base import Channel, ErrorKind, Sent, SmsPayload, require_payload

#: The 'To' number is invalid, not a mobile, unsubscribed (STOP) or unreachable.
_REJECTED_CODES = frozenset({21211, 21214, 21217, 21401, 21407, 21610, 21612, 21614})
#: The 'From' number or messaging service is not ours, or the account cannot send there.
_MISCONFIGURED_CODES = frozenset({20003, 20404, 21212, 21606, 21408, 21659, 30007})
_THROTTLED_CODES = frozenset({20429, 14107})

_E164 = r"^\+[1-9]\d{6,14}$"


class TwilioSettings(ProviderSettings):
    from_number: str | None = Field(default=None, pattern=_E164, description="E.164 sender")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    status_callback: str | None = Field(default=None, description="Delivery status webhook")
    base_url: str = "https://api.twilio.com"
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("base_url", "status_callback")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioSettings:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        return self


class TwilioCredentials(ProviderCredentials):
    account_sid: SecretStr = Field(min_length=1)
    auth_token: SecretStr = Field(min_length=1)


def explain_twilio(response: httpx.Response) -> Refusal:
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        return Refusal()
    code: int = body["code"]
    kind: ErrorKind | None = None
    if code in _REJECTED_CODES:
        kind = ErrorKind.rejected
    elif code in _THROTTLED_CODES:
        kind = ErrorKind.throttled
    elif code in _MISCONFIGURED_CODES:
        kind = ErrorKind.misconfigured
    message = body.get("message")
    return Refusal(kind=kind, code=str(code), detail=str(message) if message else None)


class TwilioProvider:
    """Sends an SMS through Twilio.

    >>> TwilioProvider("twilio", TwilioSettings(from_number="+15005550006"), credentials)
    """

    kind = "twilio"
    channel = Channel.sms

    def __init__(
        self,
        name: str,
        settings: TwilioSettings,
        credentials: TwilioCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._account_sid = credentials.account_sid.get_secret_value()
        self._auth_token = credentials.auth_token.get_secret_value()
        self._http = ProviderHttp(
            name, timeout=settings.timeout, secrets=(self._auth_token,), http=http
        )

    async def send(self, payload: SmsPayload) -> Sent:
        require_payload(self, payload, SmsPayload)
        form = {"To": payload.recipient, "Body": payload.body}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        elif self.settings.from_number:
            form["From"] = self.settings.from_number
        if self.settings.status_callback:
            form["StatusCallback"] = self.settings.status_callback
        response = await self._http.request(
            "POST",
            f"{self.settings.base_url}/2010-04-01/Accounts/{self._account_sid}/Messages.json",
            form=form,
            auth=(self._account_sid, self._auth_token),
            explain=explain_twilio,
        )
        answer = json_body(response)
        sid = answer.get("sid") if isinstance(answer, dict) else None
        return Sent(self.name, str(sid) if sid else None)

    async def aclose(self) -> None:
        await self._http.aclose()

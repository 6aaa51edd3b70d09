"""Push to Android, iOS and web apps through Firebase Cloud Messaging (HTTP v1).

FCM takes an OAuth2 access token of a Google service account. The account's JSON key is
the credential: we sign a JWT assertion with its private key (RS256, RFC 7523), trade it at
the account's ``token_uri`` for an access token, and keep that token until a minute before
it expires, so a burst of sends costs one token request.

FCM's errors are ``google.rpc.Status`` documents whose details carry an ``FcmError`` code
(https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode); :func:`explain_fcm`
maps them: ``UNREGISTERED`` means the token is gone.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, SecretStr, field_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings, check_base_url
from keel.notify.providers._http import ProviderHttp, Refusal, json_body
from keel.notify.providers.base import (
    Channel,
    ErrorKind,
    FcmTarget,
    ProviderConfigError,
    ProviderError,
    PushPayload,
    Sent,
    require_payload,
)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
#: A token is replaced this many seconds before it expires, so none expires in flight.
TOKEN_MARGIN = 60.0
_ASSERTION_LIFETIME = 3600

_REJECTED = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
_THROTTLED = frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"})
_RETRYABLE = frozenset({"UNAVAILABLE", "INTERNAL"})
_MISCONFIGURED = frozenset(
    {"THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND"}
)


class FcmSettings(ProviderSettings):
    project_id: str | None = Field(
        default=None, min_length=1, description="Default: the service account's project_id"
    )
    base_url: str = "https://fcm.googleapis.com"
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)


class ServiceAccount:
    """The parts of a Google service account key FCM needs. Its repr shows no key."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.client_email = str(info["client_email"])
        self.private_key_id = str(info.get("private_key_id") or "") or None
        self.project_id = str(info.get("project_id") or "") or None
        self.token_uri = check_base_url(str(info.get("token_uri") or DEFAULT_TOKEN_URI))
        key = load_pem_private_key(str(info["private_key"]).encode(), password=None)
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("private_key is not an RSA key")
        self.private_key = key

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r})"

    def assertion(self, now: float) -> str:
        """A signed JWT asking ``token_uri`` for an FCM access token (RFC 7523)."""
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": int(now),
            "exp": int(now) + _ASSERTION_LIFETIME,
        }
        headers = {"kid": self.private_key_id} if self.private_key_id else None
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers=headers)


class FcmCredentials(ProviderCredentials):
    service_account_json: SecretStr = Field(min_length=1)

    @field_validator("service_account_json")
    @classmethod
    def _readable(cls, value: SecretStr) -> SecretStr:
        parse_service_account(value.get_secret_value())
        return value


def parse_service_account(text: str) -> ServiceAccount:
    """The key file's account; the error names what is wrong, never what the file holds."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(info, dict):
        raise ValueError("is not a JSON object")
    missing = [field for field in ("client_email", "private_key") if not info.get(field)]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    try:
        return ServiceAccount(info)
    except (ValueError, TypeError) as exc:
        # cryptography's messages describe the key's format, never its content.
        reason = str(exc) if "private_key" in str(exc) else "private_key is not a PEM RSA key"
        raise ValueError(reason) from None


def explain_fcm(response: httpx.Response) -> Refusal:
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return Refusal()
    code = None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            code = str(detail["errorCode"])
    code = code or (str(error["status"]) if error.get("status") else None)
    kind: ErrorKind | None = None
    if code in _REJECTED:
        kind = ErrorKind.rejected
    elif code in _THROTTLED:
        kind = ErrorKind.throttled
    elif code in _RETRYABLE:
        kind = ErrorKind.retryable
    elif code in _MISCONFIGURED:
        kind = ErrorKind.misconfigured
    message = error.get("message")
    return Refusal(kind=kind, code=code, detail=str(message) if message else None)


def explain_token_refusal(response: httpx.Response) -> Refusal:
    """The token endpoint refusing us is our key (revoked, wrong audience), never the
    recipient: every 4xx but 429 is ``misconfigured``."""
    body = json_body(response)
    code = str(body.get("error")) if isinstance(body, dict) and body.get("error") else None
    status = response.status_code
    kind = ErrorKind.misconfigured if 400 <= status < 500 and status != 429 else None
    return Refusal(kind=kind, code=code, detail="access token refused")


class FcmProvider:
    """Sends push notifications to FCM registration tokens.

    >>> FcmProvider("fcm", FcmSettings(), FcmCredentials(service_account_json=key_json))
    """

    kind = "fcm"
    channel = Channel.push

    def __init__(
        self,
        name: str,
        settings: FcmSettings,
        credentials: FcmCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._account = parse_service_account(credentials.service_account_json.get_secret_value())
        project_id = settings.project_id or self._account.project_id
        if not project_id:
            raise ProviderConfigError(
                "fcm settings: project_id: required (the service account names none)"
            )
        self.project_id = project_id
        self._http = ProviderHttp(name, timeout=settings.timeout, secrets=(), http=http)
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = asyncio.Lock()

    async def send(self, payload: PushPayload) -> Sent:
        require_payload(self, payload, PushPayload)
        if not isinstance(payload.target, FcmTarget):
            raise TypeError(f"provider {self.name!r} (fcm) sends to FCM tokens only")
        message = {
            "message": {
                "token": payload.target.token,
                "notification": {"title": payload.title, "body": payload.body},
                "data": dict(payload.data),
            }
        }
        token = await self._access_token()
        try:
            response = await self._http.request(
                "POST",
                f"{self.settings.base_url}/v1/projects/{self.project_id}/messages:send",
                headers={"Authorization": f"Bearer {token}"},
                json_content=message,
                explain=explain_fcm,
            )
        except ProviderError as error:
            if error.status == 401:
                self._token = None  # revoked early: the next send fetches a new one
            raise
        answer = json_body(response)
        message_name = answer.get("name") if isinstance(answer, dict) else None
        return Sent(self.name, str(message_name) if message_name else None)

    async def _access_token(self) -> str:
        async with self._token_lock:
            if self._token and time.time() < self._token_expires_at - TOKEN_MARGIN:
                return self._token
            now = time.time()
            response = await self._http.request(
                "POST",
                self._account.token_uri,
                form={"grant_type": GRANT_TYPE, "assertion": self._account.assertion(now)},
                explain=explain_token_refusal,
            )
            answer = json_body(response)
            token = answer.get("access_token") if isinstance(answer, dict) else None
            if not isinstance(token, str) or not token:
                raise self._http.error(
                    "the token endpoint answered without an access_token",
                    ErrorKind.retryable,
                    status=response.status_code,
                )
            expires_in = answer.get("expires_in", 3600) if isinstance(answer, dict) else 3600
            self._token = token
            self._token_expires_at = now + float(expires_in)
            return token

    async def aclose(self) -> None:
        await self._http.aclose()

"""Web Push to browsers: the payload encrypted for the subscription (RFC 8291, aes128gcm)
and the request signed with our VAPID key (RFC 8292).

pywebpush encrypts and py_vapid signs; the request goes out over our own async httpx
client (pywebpush's own senders are requests and aiohttp). A push service answering 404 or
410 says the subscription is gone: ``rejected``, and the service drops it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from py_vapid import Vapid02
from pydantic import Field, SecretStr, field_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings
from keel.notify.providers._http import ProviderHttp
from keel.notify.providers.base import (
    Channel,
    ErrorKind,
    PushPayload,
    Sent,
    WebPushTarget,
    require_payload,
)

_MAILTO = re.compile(r"mailto:[^@\s]+@[\w.-]+\.[\w-]+", re.IGNORECASE)
_HTTPS_ORIGIN = re.compile(r"https://[\w-]+(\.[\w-]+)+(:\d+)?", re.IGNORECASE)

#: How long a VAPID token stays valid; RFC 8292 section 2 caps it at 24 hours.
VAPID_LIFETIME = 12 * 3600


class WebPushSettings(ProviderSettings):
    subject: str = Field(description="mailto: or https: contact for the push service")
    ttl: int = Field(default=86400, ge=0, le=2419200, description="Seconds a push may wait")
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("subject")
    @classmethod
    def _contact(cls, value: str) -> str:
        # RFC 8292 section 2.1: a mailto: or https: URI. py_vapid also wants an https:
        # subject to be an origin alone, so paths are refused here rather than at send time.
        if _MAILTO.fullmatch(value) or _HTTPS_ORIGIN.fullmatch(value):
            return value
        raise ValueError("must be a mailto: address or an https:// origin (no path)")


def load_vapid_key(text: str) -> Vapid02:
    """A VAPID signer from a PEM private key or a base64url raw (32 bytes) or DER key."""
    try:
        if "-----BEGIN" in text:
            return Vapid02.from_pem(text.strip().encode())
        return Vapid02.from_string(text.strip())
    except Exception:  # py_vapid raises whatever its parsers do; the key must not show.
        raise ValueError("is not a P-256 private key (PEM, or base64url raw or DER)") from None


class WebPushCredentials(ProviderCredentials):
    vapid_private_key: SecretStr = Field(min_length=1)

    @field_validator("vapid_private_key")
    @classmethod
    def _readable(cls, value: SecretStr) -> SecretStr:
        load_vapid_key(value.get_secret_value())
        return value


def encrypt_for(target: WebPushTarget, data: bytes) -> bytes:
    """``data`` encrypted for the subscription's keys (aes128gcm, RFC 8188 framing)."""
    # Imported here: pywebpush imports requests and aiohttp, which nothing else needs.
    from pywebpush import WebPusher

    subscription = {
        "endpoint": target.endpoint,
        "keys": {"p256dh": target.p256dh, "auth": target.auth},
    }
    encoded = WebPusher(subscription).encode(data, content_encoding="aes128gcm")
    body: bytes = encoded["body"]
    return body


class WebPushProvider:
    """Sends push messages to browser subscriptions.

    >>> WebPushProvider("webpush", WebPushSettings(subject="mailto:ops@acme.test"), creds)
    """

    kind = "webpush"
    channel = Channel.push

    def __init__(
        self,
        name: str,
        settings: WebPushSettings,
        credentials: WebPushCredentials,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._vapid = load_vapid_key(credentials.vapid_private_key.get_secret_value())
        self._http = ProviderHttp(name, timeout=settings.timeout, secrets=(), http=http)

    def vapid_authorization(self, endpoint: str, now: float) -> str:
        """The ``Authorization: vapid t=..., k=...`` header for the endpoint's origin."""
        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "sub": self.settings.subject,
            "exp": int(now) + VAPID_LIFETIME,
        }
        try:
            header: str = self._vapid.sign(claims)["Authorization"]
        except Exception:  # py_vapid refuses claims it dislikes with its own exceptions
            raise self._http.error(
                "VAPID signing refused the claims (check the subject setting)",
                ErrorKind.misconfigured,
            ) from None
        return header

    async def send(self, payload: PushPayload) -> Sent:
        require_payload(self, payload, PushPayload)
        target = payload.target
        if not isinstance(target, WebPushTarget):
            raise TypeError(f"provider {self.name!r} (webpush) sends to web push subscriptions")
        endpoint = urlsplit(target.endpoint)
        if endpoint.scheme not in ("https", "http") or not endpoint.netloc:
            # The endpoint is the browser's, not ours: an unusable one is a bad recipient.
            raise self._http.error(
                "the subscription's endpoint is not an http(s) URL",
                ErrorKind.rejected,
                code="invalid_endpoint",
            )
        message: dict[str, Any] = {"title": payload.title, "body": payload.body}
        if payload.data:
            message["data"] = dict(payload.data)
        try:
            body = encrypt_for(target, json.dumps(message).encode())
        except Exception:  # pywebpush/http_ece raise assorted errors for unusable keys
            raise self._http.error(
                "the subscription's keys are unusable", ErrorKind.rejected, code="invalid_keys"
            ) from None
        response = await self._http.request(
            "POST",
            target.endpoint,
            headers={
                "Authorization": self.vapid_authorization(target.endpoint, time.time()),
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(self.settings.ttl),
                "Urgency": self.settings.urgency,
            },
            content=body,
        )
        return Sent(self.name, response.headers.get("location"))

    async def aclose(self) -> None:
        await self._http.aclose()

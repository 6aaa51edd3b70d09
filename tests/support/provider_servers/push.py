"""Push: FCM (with its OAuth token endpoint) and Web Push (each payload decrypted with the
subscription's key, the VAPID JWT checked)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Response

from keel.notify.providers.base import WebPushTarget
from tests.support.provider_servers.http import (
    HttpTestServer,
    ReceivedRequest,
    json_response,
    serving,
)

# FCM ----------------------------------------------------------------------------------

_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class FcmTestServer(HttpTestServer):
    """FCM HTTP v1 and the OAuth token endpoint of the service account it hands out."""

    def __init__(self, project_id: str, token_lifetime: int) -> None:
        super().__init__()
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.client_email = f"keel-test@{project_id}.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._access_tokens: set[str] = set()
        self.token_requests = 0
        self.messages: list[dict[str, Any]] = []

    def reset(self) -> None:
        super().reset()
        self.token_requests = 0
        self._access_tokens.clear()

    def service_account_json(self) -> str:
        """A Google service account key whose ``token_uri`` is this server."""
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": "keel-test-key",
                "private_key": private_pem,
                "client_email": self.client_email,
                "token_uri": f"{self.url}/token",
            }
        )

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"base_url": self.url, "timeout": 5} | overrides

    def credentials(self) -> dict[str, str]:
        return {"service_account_json": self.service_account_json()}

    def revoke_tokens(self) -> None:
        self._access_tokens.clear()

    def can_fail(self, request: ReceivedRequest) -> bool:
        return request.path != "/token"

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _RPC_STATUS.get(status, "INTERNAL"),
        }
        if code is not None:
            error["details"] = [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
            ]
        return json_response({"error": error}, status)

    async def accept(self, request: ReceivedRequest) -> Response:
        if request.path == "/token":
            return self._token(request)
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or token not in self._access_tokens:
            return self.error_response(401, None, "Request had invalid authentication credentials.")
        if request.path != f"/v1/projects/{self.project_id}/messages:send":
            return self.error_response(404, None, "Requested entity was not found.")
        self.messages.append(request.json()["message"])
        return json_response({"name": f"projects/{self.project_id}/messages/{len(self.messages)}"})

    def _token(self, request: ReceivedRequest) -> Response:
        self.token_requests += 1
        form = request.form()
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=f"{self.url}/token",
                issuer=self.client_email,
            )
        except jwt.PyJWTError:
            return json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT"}, 400
            )
        if (
            form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer"
            or claims.get("scope") != "https://www.googleapis.com/auth/firebase.messaging"
        ):
            return json_response({"error": "invalid_scope"}, 400)
        token = "ya29." + secrets.token_urlsafe(24)
        self._access_tokens.add(token)
        return json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )


@asynccontextmanager
async def fcm_server(
    *, project_id: str = "keel-test", token_lifetime: int = 3599
) -> AsyncIterator[FcmTestServer]:
    server = FcmTestServer(project_id, token_lifetime)
    async with serving(server):
        yield server


# Web Push -----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class _Subscription:
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes


@dataclass(frozen=True)
class PushMessage:
    subscription: str
    payload: Any
    """The decrypted body, parsed as JSON."""
    vapid_claims: Mapping[str, Any]
    vapid_public_key: str
    """The key (base64url) the VAPID token was verified with."""
    ttl: str | None
    urgency: str | None


def vapid_key_pair() -> tuple[str, str]:
    """A new VAPID key pair: the private key as PEM, the public key as base64url (X9.62)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return private_pem, _b64url(public)


class WebPushTestServer(HttpTestServer):
    """A push service: subscriptions it made, each payload decrypted with the subscription's
    private key (RFC 8291) and each VAPID token verified (RFC 8292)."""

    def __init__(self, vapid_public_key: str | None) -> None:
        super().__init__()
        self.vapid_public_key = vapid_public_key
        self._subscriptions: dict[str, _Subscription] = {}
        self.messages: list[PushMessage] = []

    def subscribe(self) -> WebPushTarget:
        """A new subscription, as a browser's ``PushSubscription`` would hand it over."""
        subscription_id = secrets.token_urlsafe(12)
        key = ec.generate_private_key(ec.SECP256R1())
        auth_secret = secrets.token_bytes(16)
        self._subscriptions[subscription_id] = _Subscription(key, auth_secret)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return WebPushTarget(
            endpoint=f"{self.url}/push/{subscription_id}",
            p256dh=_b64url(public),
            auth=_b64url(auth_secret),
        )

    def unsubscribe(self, target: WebPushTarget) -> None:
        """The browser dropped the subscription: pushes to it answer 410 Gone."""
        self._subscriptions.pop(target.endpoint.rsplit("/", 1)[-1], None)

    def _vapid_claims(self, authorization: str) -> tuple[dict[str, Any], str] | None:
        """The verified claims of a ``vapid t=<jwt>, k=<key>`` header, and its key."""
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            return None
        fields = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
        token, public = fields.get("t"), fields.get("k")
        if not token or not public:
            return None
        if self.vapid_public_key is not None and public != self.vapid_public_key:
            return None
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64url_decode(public))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["ES256"], audience=self.url, options={"require": ["exp"]}
            )
        except jwt.PyJWTError:
            return None
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return None
        if claims["exp"] > time.time() + 24 * 3600:
            return None
        return claims, public

    async def accept(self, request: ReceivedRequest) -> Response:
        verified = self._vapid_claims(request.headers.get("authorization", ""))
        if verified is None:
            return Response("invalid VAPID authorization", status_code=401)
        subscription_id = request.path.removeprefix("/push/")
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return Response("subscription gone", status_code=410)
        if request.headers.get("content-encoding") != "aes128gcm":
            return Response("unsupported content encoding", status_code=415)
        plaintext = http_ece.decrypt(
            request.body,
            private_key=subscription.private_key,
            auth_secret=subscription.auth_secret,
            version="aes128gcm",
        )
        self.messages.append(
            PushMessage(
                subscription=subscription_id,
                payload=json.loads(plaintext),
                vapid_claims=verified[0],
                vapid_public_key=verified[1],
                ttl=request.headers.get("ttl"),
                urgency=request.headers.get("urgency"),
            )
        )
        return Response(
            status_code=201, headers={"Location": f"{self.url}/messages/{len(self.messages)}"}
        )


@asynccontextmanager
async def webpush_server(
    *, vapid_public_key: str | None = None
) -> AsyncIterator[WebPushTestServer]:
    """A push service; with ``vapid_public_key`` it refuses tokens signed by any other key."""
    server = WebPushTestServer(vapid_public_key)
    async with serving(server):
        yield server

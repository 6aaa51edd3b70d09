"""Local servers speaking each notification provider's protocol, for tests.

Every server listens on 127.0.0.1 (a free port), records what it received, parsed, and can
be told to fail the next requests in the provider's own error format::

    async with smtp_server() as smtp:
        provider = build_provider("smtp", smtp.settings(), {})
        await provider.send(payload)
        assert smtp.messages[0].data == payload.raw

    async with ses_server() as ses:
        ses.fail_next(1, status=429, retry_after=3)
        provider = build_provider("ses", ses.settings(), ses.credentials())

Servers: :func:`smtp_server` (aiosmtpd: AUTH, STARTTLS or implicit TLS with a certificate
made at start; configurable refusals), and HTTP servers for SES v2 (verifies each request's
SigV4 signature), Postmark, Twilio, FCM (with its OAuth token endpoint), Web Push (decrypts
each payload with the subscription's private key and checks the VAPID JWT) and Slack
webhooks. ``settings()`` and ``credentials()`` give what ``build_provider`` needs to reach
the server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import http_ece
import jwt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request, Response

from keel.notify.providers.base import WebPushTarget
from keel.notify.providers.sigv4 import signature
from tests.support.asgi import serve_over_tcp
from tests.support.keel_process import free_port

# --------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost; ``cert_file`` doubles as the
    CA file a client trusts."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def self_signed_certificate(directory: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


# --------------------------------------------------------------------------------------
# SMTP

SmtpStage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    """The message exactly as received (dot-stuffing undone)."""
    authenticated_as: str | None
    over_tls: bool
    received_at: float = field(default_factory=time.monotonic)
    """When the server took it (``time.monotonic()``), for tests of rate limits."""


@dataclass
class _SmtpFailure:
    reply: str
    stage: SmtpStage


class SmtpTestServer:
    """An aiosmtpd server (in its own thread, as aiosmtpd's Controller runs it)."""

    def __init__(
        self,
        *,
        security: Literal["none", "starttls", "tls"],
        username: str | None,
        password: str | None,
        certificate: Certificate | None,
    ) -> None:
        self.security = security
        self.username = username
        self.password = password
        self.certificate = certificate
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[ReceivedMail] = []
        self.failed_logins = 0
        #: SMTP sessions the server has begun (a client that keeps its connection opens one).
        self.connections = 0
        self._failures: list[_SmtpFailure] = []
        self._rejected: dict[str, str] = {}
        self._controller: Controller | None = None

    @property
    def ca_file(self) -> str | None:
        return str(self.certificate.cert_file) if self.certificate else None

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings of an ``smtp`` provider that reaches this server."""
        settings: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "timeout": 30,  # generous: a loaded CI machine is slow, and a timeout is a retry
        }
        if self.ca_file:
            settings["ca_file"] = self.ca_file
        return settings | overrides

    def credentials(self) -> dict[str, str]:
        if self.username is None or self.password is None:
            return {}
        return {"username": self.username, "password": self.password}

    def fail_next(
        self, n: int = 1, reply: str = "451 4.7.1 try later", *, at: SmtpStage = "rcpt"
    ) -> None:
        """Answer ``reply`` to the next ``n`` transactions at ``at`` (MAIL, RCPT or DATA)."""
        self._failures.extend(_SmtpFailure(reply, at) for _ in range(n))

    def reject_recipient(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        """Answer ``reply`` to every ``RCPT TO`` naming ``address``."""
        self._rejected[address.lower()] = reply

    def _failure_at(self, stage: SmtpStage) -> str | None:
        if self._failures and self._failures[0].stage == stage:
            return self._failures.pop(0).reply
        return None

    # aiosmtpd handler hooks -------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not getattr(session, "keel_counted", False):  # STARTTLS makes a client EHLO again
            session.keel_counted = True  # type: ignore[attr-defined]
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        failure = self._failure_at("mail")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        failure = self._failure_at("rcpt") or self._rejected.get(address.lower())
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self._failure_at("data")
        if failure:
            return failure
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                authenticated_as=login.decode() if login else None,
                over_tls=server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.messages)}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if (
            isinstance(auth_data, LoginPassword)
            and self.username is not None
            and self.password is not None
            and hmac.compare_digest(auth_data.login, self.username.encode())
            and hmac.compare_digest(auth_data.password, self.password.encode())
        ):
            return AuthResult(success=True, auth_data=auth_data)
        self.failed_logins += 1
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": self.security != "none",
            }
        if self.security == "starttls" and self.certificate:
            kwargs |= {
                "tls_context": self.certificate.server_context(),
                "require_starttls": True,
            }
        if self.security == "tls" and self.certificate:
            kwargs["ssl_context"] = self.certificate.server_context()
        self._controller = Controller(self, hostname=self.host, port=self.port, **kwargs)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()


@asynccontextmanager
async def smtp_server(
    *,
    security: Literal["none", "starttls", "tls"] = "none",
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[SmtpTestServer]:
    """An SMTP server on a free port; ``security`` other than none makes a certificate
    (trust it with ``server.ca_file``), ``username``/``password`` require AUTH."""
    with tempfile.TemporaryDirectory(prefix="keel-smtp-") as directory:
        certificate = self_signed_certificate(Path(directory)) if security != "none" else None
        server = SmtpTestServer(
            security=security, username=username, password=password, certificate=certificate
        )
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)


# --------------------------------------------------------------------------------------
# HTTP servers


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Failure:
    status: int
    retry_after: float | None
    code: str | int | None
    message: str


class HttpTestServer(ABC):
    """What every provider's HTTP server shares: recording, planned failures, serving.

    Subclasses answer success in :meth:`accept` and write errors in their provider's format
    in :meth:`error_response`.
    """

    messages: list[Any]
    """What the provider accepted, parsed (each server says in what form)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[ReceivedRequest] = []
        self._failures: list[Failure] = []
        self._stalls: list[float] = []

    def reset(self) -> None:
        """Forget what was received and planned, for a server shared by several tests."""
        self.requests.clear()
        self._failures.clear()
        self._stalls.clear()
        self.messages.clear()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        code: str | int | None = None,
        message: str = "planned failure",
    ) -> None:
        """Answer the next ``n`` sends with ``status`` (and ``Retry-After``), the error
        body in the provider's format naming ``code``."""
        self._failures.extend(Failure(status, retry_after, code, message) for _ in range(n))

    def stall_next(self, n: int = 1, *, seconds: float = 1.0) -> None:
        """Hold the next ``n`` answers for ``seconds``: a provider that is too slow."""
        self._stalls.extend(seconds for _ in range(n))

    def can_fail(self, request: ReceivedRequest) -> bool:
        """Whether a planned failure applies to this request (not to a token request)."""
        return True

    @abstractmethod
    async def accept(self, request: ReceivedRequest) -> Response:
        """The provider's answer to a request it accepts (each server's own)."""

    def error_response(self, status: int, code: str | int | None, message: str) -> Response:
        return Response(message, status_code=status, media_type="text/plain")

    async def _dispatch(self, request: ReceivedRequest) -> Response:
        self.requests.append(request)
        if self._stalls and self.can_fail(request):
            await asyncio.sleep(self._stalls.pop(0))
        if self._failures and self.can_fail(request):
            failure = self._failures.pop(0)
            response = self.error_response(failure.status, failure.code, failure.message)
            if failure.retry_after is not None:
                response.headers["Retry-After"] = str(int(failure.retry_after))
            return response
        return await self.accept(request)

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
        async def receive(request: Request) -> Response:
            received = ReceivedRequest(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers={name.lower(): value for name, value in request.headers.items()},
                body=await request.body(),
            )
            return await self._dispatch(received)

        return app


@asynccontextmanager
async def _serving(server: HttpTestServer) -> AsyncIterator[None]:
    async with serve_over_tcp(server.app()) as url:
        server.url = url
        yield


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status_code=status, media_type="application/json", headers=headers
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
        return _json(
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
        return _json({"MessageId": f"ses-{len(self.messages)}"})


@asynccontextmanager
async def ses_server(
    *,
    access_key_id: str = "AKIDKEELTEST",
    secret_access_key: str = "keel-test-secret-access-key/0123456789",  # noqa: S107
    region: str = "us-east-1",
) -> AsyncIterator[SesTestServer]:
    server = SesTestServer(access_key_id, secret_access_key, region)
    async with _serving(server):
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
        return _json(
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
        return _json(
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
    async with _serving(server):
        yield server


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
        return _json(
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
        return _json({"sid": sid, "status": "queued", "to": form.get("To")}, 201)


@asynccontextmanager
async def twilio_server(
    *,
    account_sid: str = "AC" + "0" * 32,
    auth_token: str = "keel-test-twilio-auth-token",  # noqa: S107
) -> AsyncIterator[TwilioTestServer]:
    server = TwilioTestServer(account_sid, auth_token)
    async with _serving(server):
        yield server


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
        return _json({"error": error}, status)

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
        return _json({"name": f"projects/{self.project_id}/messages/{len(self.messages)}"})

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
            return _json({"error": "invalid_grant", "error_description": "Invalid JWT"}, 400)
        if (
            form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer"
            or claims.get("scope") != "https://www.googleapis.com/auth/firebase.messaging"
        ):
            return _json({"error": "invalid_scope"}, 400)
        token = "ya29." + secrets.token_urlsafe(24)
        self._access_tokens.add(token)
        return _json(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )


@asynccontextmanager
async def fcm_server(
    *, project_id: str = "keel-test", token_lifetime: int = 3599
) -> AsyncIterator[FcmTestServer]:
    server = FcmTestServer(project_id, token_lifetime)
    async with _serving(server):
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
    async with _serving(server):
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
    async with _serving(server):
        yield server


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


__all__ = [
    "Certificate",
    "FcmTestServer",
    "HttpTestServer",
    "PostmarkTestServer",
    "PushMessage",
    "ReceivedMail",
    "ReceivedRequest",
    "SesMessage",
    "SesTestServer",
    "SlackTestServer",
    "SmtpTestServer",
    "TwilioTestServer",
    "WebPushTestServer",
    "closed_port_url",
    "fcm_server",
    "postmark_server",
    "self_signed_certificate",
    "ses_server",
    "slack_server",
    "smtp_server",
    "twilio_server",
    "vapid_key_pair",
    "webpush_server",
]

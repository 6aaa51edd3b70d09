"""An SMTP server (aiosmtpd): AUTH, STARTTLS or implicit TLS, configurable refusals."""

from __future__ import annotations

import asyncio
import hmac
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.keel_process import free_port
from tests.support.tls import Certificate, self_signed_certificate

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

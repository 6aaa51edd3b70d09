"""Email over SMTP (aiosmtplib): the DKIM-signed message sent byte for byte.

Connections are kept between sends (up to ``pool_size`` idle, each for ``idle_seconds``):
a relay's greeting, EHLO, STARTTLS and AUTH cost more than a small message's transaction.
A connection that failed is never reused; a send on a kept connection that the relay has
meanwhile closed is tried once more on a new one (nothing was accepted on the dead one).

SMTP reply codes map to error kinds by :func:`kind_for_reply`, which also weighs the stage
that failed: a 550 to ``RCPT TO`` is a bad mailbox, a 550 to ``MAIL FROM`` is a sender this
relay refuses (our configuration).
"""

from __future__ import annotations

import re
import ssl
import time
from email.utils import parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Literal

import aiosmtplib
from pydantic import Field, SecretStr, field_validator, model_validator

from keel.notify.providers._config import ProviderCredentials, ProviderSettings
from keel.notify.providers._http import redact
from keel.notify.providers.base import (
    Channel,
    EmailPayload,
    ErrorKind,
    ProviderConfigError,
    ProviderError,
    Sent,
    require_payload,
)

Stage = Literal["connect", "auth", "mail", "rcpt", "data"]

_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)


class SmtpSecurity(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


class SmtpSettings(ProviderSettings):
    host: str = Field(min_length=1, description="Relay host name or IP address.")
    port: int = Field(default=587, ge=1, le=65535)
    security: SmtpSecurity = Field(
        default=SmtpSecurity.starttls,
        description="none, starttls (upgrade after connecting) or tls (implicit, port 465).",
    )
    timeout: float = Field(default=30.0, gt=0, le=300)
    ca_file: str | None = Field(
        default=None, description="PEM file of CAs to trust instead of the system's."
    )
    validate_certs: bool = True
    local_hostname: str | None = Field(default=None, description="The name sent with EHLO.")
    pool_size: int = Field(
        default=10, ge=0, le=100, description="Connections kept open between sends."
    )
    idle_seconds: float = Field(
        default=30.0, ge=0, le=600, description="How long a kept connection may sit unused."
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError("no such file")
        return value


class SmtpCredentials(ProviderCredentials):
    username: SecretStr | None = Field(default=None, min_length=1)
    password: SecretStr | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _both_or_neither(self) -> SmtpCredentials:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


def kind_for_reply(code: int, stage: Stage) -> ErrorKind:
    """The error kind of an SMTP reply code at the stage that received it."""
    if code in (421, 451, 452):
        return ErrorKind.throttled
    if 400 <= code < 500:
        return ErrorKind.retryable
    if code in (530, 534, 535, 538) or stage in ("connect", "auth"):
        return ErrorKind.misconfigured
    if stage == "rcpt":
        return ErrorKind.rejected
    if stage == "data" and code in (552, 554):
        # The relay refused this message (size, content); another would too.
        return ErrorKind.rejected
    return ErrorKind.misconfigured


class SmtpProvider:
    """Sends :class:`EmailPayload.raw` to an SMTP relay.

    >>> provider = SmtpProvider("relay", SmtpSettings(host="smtp.acme.test"), SmtpCredentials())
    """

    kind = "smtp"
    channel = Channel.email

    def __init__(self, name: str, settings: SmtpSettings, credentials: SmtpCredentials) -> None:
        if credentials.username is not None and settings.security is SmtpSecurity.none:
            raise ProviderConfigError(
                "smtp settings: security: must be starttls or tls when credentials are set "
                "(a password is never sent in clear)"
            )
        self.name = name
        self.settings = settings
        self._credentials = credentials
        self._secrets = tuple(
            secret.get_secret_value()
            for secret in (credentials.username, credentials.password)
            if secret is not None
        )
        self._tls_context = self._make_tls_context()
        #: Connections between sends, newest last, with when each was last used.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def _make_tls_context(self) -> ssl.SSLContext | None:
        if self.settings.security is SmtpSecurity.none:
            return None
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        if not self.settings.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def send(self, payload: EmailPayload) -> Sent:
        require_payload(self, payload, EmailPayload)
        client = self._kept()
        if client is not None:
            try:
                reply = await self._deliver(client, payload)
            except ProviderError as error:
                await self._close(client)
                if error.status is not None:  # the relay answered: its answer stands
                    raise
                client = None  # the kept connection had gone stale: a new one, once
            else:
                self._keep(client)
                return Sent(self.name, _message_id(payload, reply))
        client = await self._connect()
        try:
            reply = await self._deliver(client, payload)
        except ProviderError:
            await self._close(client)
            raise
        self._keep(client)
        return Sent(self.name, _message_id(payload, reply))

    async def aclose(self) -> None:
        """Say goodbye on every kept connection."""
        kept, self._idle = self._idle, []
        for client, _ in kept:
            await self._close(client)

    def _kept(self) -> aiosmtplib.SMTP | None:
        """A kept connection still fresh, if any (the stale ones are dropped)."""
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < self.settings.idle_seconds:
                return client
            client.close()
        return None

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and len(self._idle) < self.settings.pool_size:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        security = self.settings.security
        username = self._credentials.username
        password = self._credentials.password
        client = aiosmtplib.SMTP(
            hostname=self.settings.host,
            port=self.settings.port,
            timeout=self.settings.timeout,
            use_tls=security is SmtpSecurity.tls,
            start_tls=security is SmtpSecurity.starttls,
            tls_context=self._tls_context,
            local_hostname=self.settings.local_hostname,
            username=username.get_secret_value() if username else None,
            password=password.get_secret_value() if password else None,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise self._error(exc, "auth") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise self._error(exc, "connect") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._connection_error(exc) from None
        return client

    async def _deliver(self, client: aiosmtplib.SMTP, payload: EmailPayload) -> str:
        sender = parseaddr(payload.sender)[1] or payload.sender
        recipient = parseaddr(payload.recipient)[1] or payload.recipient
        try:
            _, reply = await client.sendmail(sender, [recipient], payload.raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise self._error(exc.recipients[0], "rcpt") from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise self._error(exc, "mail") from None
        except aiosmtplib.SMTPDataError as exc:
            raise self._error(exc, "data") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise self._error(exc, "mail") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._connection_error(exc) from None
        return reply

    async def _close(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            # The message is already accepted (or already failed); a rude close is harmless.
            client.close()

    def _error(self, exc: aiosmtplib.SMTPResponseException, stage: Stage) -> ProviderError:
        kind = kind_for_reply(exc.code, stage)
        return ProviderError(
            redact(f"{stage}: {exc.code} {exc.message}", self._secrets),
            provider=self.name,
            kind=kind,
            status=exc.code,
            code=str(exc.code),
        )

    def _connection_error(self, exc: BaseException) -> ProviderError:
        # A certificate that does not verify is our configuration (or an attack), not a
        # blip: the next provider, and an alert.
        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, ssl.SSLError) or isinstance(cause, ssl.SSLError):
            kind = ErrorKind.misconfigured
        else:
            kind = ErrorKind.retryable
        return ProviderError(
            redact(f"connection failed ({type(exc).__name__}: {exc})", self._secrets),
            provider=self.name,
            kind=kind,
        )


def _message_id(payload: EmailPayload, reply: str) -> str | None:
    """The Message-ID bounces will quote, else the relay's queue ID."""
    for name, value in payload.headers.items():
        if name.lower() == "message-id":
            return value
    match = _QUEUED_AS.search(reply)
    return match.group(1) if match else None

"""What every delivery provider shares: the payloads per channel, the result of a send, the
one error a failed send raises, and the protocol a provider follows.

A provider is a pure delivery layer: it holds no database state and knows nothing of
templates or recipients. The service layer renders a message into a payload, builds the
tenant's providers from their stored configuration and hands the payload to them, in order
(:func:`keel.notify.providers.failover.send_with_failover`).

Exception tree::

    ProviderError            a send failed; ``kind`` says what to do next
     └── FailoverExhausted   every provider of a failover list failed
    ProviderConfigError      (a ValueError) a provider's settings or credentials are unusable

``ErrorKind`` is the whole contract between a provider and the caller:

* ``retryable``: a 5xx, a timeout, a refused connection. Try the next provider, or this one
  later.
* ``throttled``: the provider asked us to slow down (HTTP 429, SMTP 421/451/452);
  ``retry_after`` holds its ``Retry-After`` when it gave one.
* ``rejected``: the recipient is bad (an unknown mailbox, an invalid phone number, a push
  token that is gone). Another provider would refuse it too, so failover stops.
* ``misconfigured``: our side is wrong (bad credentials, an unverified sender, a webhook
  that no longer exists). The next provider may work; someone should be alerted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from keel.notify.channels import Channel as Channel  # re-exported: the providers name it here


class ErrorKind(StrEnum):
    retryable = "retryable"
    throttled = "throttled"
    rejected = "rejected"
    misconfigured = "misconfigured"


@dataclass(frozen=True)
class EmailPayload:
    """A rendered email. SMTP and SES send ``raw`` unchanged (its DKIM signature must stay
    valid); API providers that build the message themselves (Postmark) use the parts and
    ``headers``."""

    sender: str
    """``"Acme <no-reply@acme.test>"``: the envelope sender is its address part."""
    recipient: str
    """``"user@example.com"``: the one envelope recipient."""
    subject: str
    text: str
    html: str | None
    headers: Mapping[str, str]
    """Extra headers already set on ``raw`` (List-Unsubscribe, List-Unsubscribe-Post,
    Message-ID, ...), for providers that do not send ``raw``."""
    raw: bytes
    """The complete, DKIM-signed RFC 5322 message with CRLF line ends."""


@dataclass(frozen=True)
class SmsPayload:
    recipient: str
    """E.164, e.g. ``"+14155550100"``."""
    body: str


@dataclass(frozen=True)
class FcmTarget:
    """A device registered with Firebase Cloud Messaging."""

    kind: ClassVar[Literal["fcm"]] = "fcm"
    token: str


@dataclass(frozen=True)
class WebPushTarget:
    """A browser's ``PushSubscription``: its endpoint and its two public keys (base64url)."""

    kind: ClassVar[Literal["webpush"]] = "webpush"
    endpoint: str
    p256dh: str
    auth: str


PushTarget = FcmTarget | WebPushTarget


@dataclass(frozen=True)
class PushPayload:
    target: PushTarget
    title: str
    body: str
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatPayload:
    text: str
    blocks: list[dict[str, Any]] | None = None


Payload = EmailPayload | SmsPayload | PushPayload | ChatPayload

PAYLOAD_OF_CHANNEL: Mapping[Channel, type[Payload]] = {
    Channel.email: EmailPayload,
    Channel.sms: SmsPayload,
    Channel.push: PushPayload,
    Channel.chat: ChatPayload,
}


@dataclass(frozen=True)
class Attempt:
    """One provider's failed try within a failover: what the service logs and reports."""

    provider: str
    kind: ErrorKind
    status: int | str | None
    code: str | None = None


@dataclass(frozen=True)
class Sent:
    """A provider accepted the message."""

    provider: str
    provider_message_id: str | None
    """The provider's own ID (SES ``MessageId``, Twilio ``sid``, FCM message name, the SMTP
    message's ``Message-ID``): what its delivery webhooks will name."""
    failures: tuple[Attempt, ...] = ()
    """The providers that failed before this one, in order."""

    @property
    def failed_over(self) -> tuple[str, ...]:
        """The names of the providers tried and failed before ``provider``."""
        return tuple(attempt.provider for attempt in self.failures)


class ProviderError(Exception):
    """A send failed. The message is ours or the provider's own explanation with every
    credential of the provider redacted: it is safe to log and to show an operator."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        kind: ErrorKind,
        status: int | str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(f"{provider}: {message}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, kind={self.kind.value!r}, "
            f"status={self.status!r}, code={self.code!r}, retry_after={self.retry_after!r}, "
            f"message={self.message!r})"
        )

    @property
    def attempt(self) -> Attempt:
        return Attempt(self.provider, self.kind, self.status, self.code)


class FailoverExhausted(ProviderError):
    """Every provider of a failover list failed and none rejected the recipient.

    ``kind`` is ``throttled`` when all of them were throttled, ``misconfigured`` when all of
    them were misconfigured, else ``retryable``; ``retry_after`` is the smallest any of them
    asked for.
    """

    def __init__(self, attempts: tuple[Attempt, ...], retry_after: float | None) -> None:
        kinds = {attempt.kind for attempt in attempts}
        if kinds == {ErrorKind.throttled}:
            kind = ErrorKind.throttled
        elif kinds == {ErrorKind.misconfigured}:
            kind = ErrorKind.misconfigured
        else:
            kind = ErrorKind.retryable
        tried = ", ".join(f"{a.provider} {a.kind.value} ({a.status})" for a in attempts)
        super().__init__(
            f"every provider failed: {tried}",
            provider="failover",
            kind=kind,
            retry_after=retry_after,
        )
        self.attempts = attempts


class ProviderConfigError(ValueError):
    """A provider's settings or credentials are unusable. The message is one line naming the
    provider kind and the field; it never repeats a credential's value."""


PayloadT_contra = TypeVar("PayloadT_contra", contravariant=True)


class Provider(Protocol[PayloadT_contra]):
    """A configured delivery provider of one channel.

    ``name`` names this configuration (``"ses-eu"``), ``kind`` the implementation
    (``"ses"``). ``send`` raises :class:`ProviderError` on failure, never anything else for
    a problem of the provider or the network. ``aclose`` releases what the provider owns (its
    own HTTP client; never an injected one).
    """

    name: str
    kind: str
    channel: Channel

    async def send(self, payload: PayloadT_contra, /) -> Sent: ...

    async def aclose(self) -> None: ...


def require_payload(provider: Provider[Any], payload: object, expected: type[Payload]) -> None:
    """A wrong payload type is a programming error, not a provider failure: a TypeError."""
    if not isinstance(payload, expected):
        raise TypeError(
            f"provider {provider.name!r} ({provider.kind}) sends {expected.__name__}, "
            f"not {type(payload).__name__}"
        )

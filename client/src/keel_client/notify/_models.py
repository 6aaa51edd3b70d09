"""What the notification endpoints answer, as the SDK reads it — a message and its status
history, a batch's reference, a recipient's profile, preferences, the in-app inbox, a
published template version — and what the sends return (:class:`MessageRef`,
:class:`BatchRef`), with the values a caller builds (:class:`BatchRecipient`,
:class:`Preference`).

Wire JSON follows ``/notify/v1`` (docs/notify.md); fields a newer Keel adds are ignored, and
a status this SDK does not know stays a plain string, so an older SDK keeps reading answers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

__all__ = ["BatchRecipient", "BatchRef", "Channel", "Inbox", "InboxItem", "Message",
           "MessageDetail", "MessageEvent", "MessageRef", "MessageStatus", "Preference",
           "Recipient", "TemplateVersion"]  # fmt: skip


class Channel(enum.StrEnum):
    """Where a message goes: a provider's channel, or the recipient's in-app inbox."""

    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    CHAT = "chat"
    IN_APP = "in_app"


class MessageStatus(enum.StrEnum):
    """A message's status: ``queued → sent → delivered → opened → clicked``, or one of the
    ends ``bounced``, ``complained``, ``failed``; ``suppressed`` (the address is on the
    suppression list) and ``skipped`` (the recipient opted out, or a limit) are never sent."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class Message(_Wire):
    """A message as Keel holds it (``GET /notify/v1/messages/{id}`` without its history).

    ``status`` is a :class:`MessageStatus` (a plain string if a newer Keel has another);
    ``error`` the last delivery error, never a credential."""

    id: str
    channel: str
    template: str
    template_version: int | None = None
    category: str | None = None
    critical: bool = False
    #: A status this SDK knows is the enum member; another stays the string Keel sent.
    status: MessageStatus | str = pydantic.Field(union_mode="left_to_right")
    tags: list[str] = []
    send_at: datetime | None = None
    sent_at: datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempts: int = 0
    error: str | None = None
    batch_id: str | None = None
    created_at: datetime | None = None


class MessageEvent(_Wire):
    """One step of a message's history: a status (``queued``, ``sent``, ``digested``,
    ``opened``...) with what Keel noted (``send_at``, ``retry_at``, ``provider``...)."""

    status: str
    detail: dict[str, Any] = {}
    at: datetime


class MessageDetail(Message):
    """A message with its status history, oldest first (:meth:`NotifyClient.message`).

    Example::

        detail = await keel.notify.message(ref.id)
        print(detail.status, [event.status for event in detail.events])
    """

    events: list[MessageEvent] = []


class Recipient(_Wire):
    """A recipient's profile as :meth:`NotifyClient.identify` left it."""

    id: str
    email: str | None = None
    phone: str | None = None
    push_targets: list[dict[str, Any]] = []
    locale: str | None = None
    timezone: str | None = None
    quiet_hours: dict[str, str] | None = None
    traits: dict[str, Any] = {}
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Preference:
    """A recipient's choice for a ``category`` (or ``*``) on a ``channel`` (or ``*``).

    Example::

        await keel.notify.set_preferences("user-42", [Preference("marketing", "*", False)])
    """

    category: str
    channel: str
    enabled: bool

    @classmethod
    def of(cls, wire: Mapping[str, Any]) -> Preference:
        return cls(str(wire["category"]), str(wire["channel"]), bool(wire["enabled"]))

    def to_wire(self) -> dict[str, Any]:
        return {"category": self.category, "channel": self.channel, "enabled": self.enabled}


class InboxItem(_Wire):
    """One in-app message: its rendered title and body, read or not."""

    id: str
    message_id: str | None = None
    title: str
    body: str
    data: dict[str, Any] = {}
    category: str | None = None
    read_at: datetime | None = None
    created_at: datetime | None = None

    @property
    def is_read(self) -> bool:
        return self.read_at is not None


class Inbox(_Wire):
    """A recipient's in-app messages, newest first, and how many are unread in all."""

    items: list[InboxItem] = []
    unread: int = 0


class TemplateVersion(_Wire):
    """A template version as published (versions never change; publishing adds one)."""

    number: int
    content: dict[str, Any]
    note: str = ""
    created_by: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """What a send returns: the message's id and status, the ``Idempotency-Key`` it was
    sent with (send again with it and Keel answers the same message), and the message.

    ``joined_digest``: a ``digest=`` send that Keel added to a message already waiting in
    its window (``id`` is that message's), rather than a new message.
    """

    id: str
    status: MessageStatus | str
    idempotency_key: str
    message: Message
    joined_digest: bool = False

    @property
    def is_queued(self) -> bool:
        """Accepted for delivery (``suppressed`` and ``skipped`` messages are not)."""
        return self.status == MessageStatus.QUEUED


@dataclass(frozen=True, slots=True)
class BatchRef:
    """What :meth:`NotifyClient.send_batch` returns: the batch's id (its messages:
    ``messages(batch_id=...)``), how many messages it made, and its ``Idempotency-Key``."""

    batch_id: str
    messages: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class BatchRecipient:
    """One recipient of a batch with data of their own (added over the batch's
    ``context``): a recipient's id (``recipient=``) or an address (``to=``), one of the two.

    Example::

        await keel.notify.send_batch("invoice-ready", [
            BatchRecipient(recipient="user-42", context={"invoice": "INV-7"}),
            BatchRecipient(to="ap@customer.example", context={"invoice": "INV-8"}),
        ])
    """

    recipient: str | None = None
    to: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.recipient is None) == (self.to is None):
            raise ValueError("a BatchRecipient has a recipient id or an address (to), one")

    def to_wire(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"data": dict(self.context)}
        if self.recipient is not None:
            entry["recipient"] = self.recipient
        else:
            entry["to"] = self.to
        return entry

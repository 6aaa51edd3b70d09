"""The notification service's tables.

- **Templates** (``notify_templates``) and their immutable **versions**
  (``notify_template_versions``): a template's ``published_version`` is what sends use;
  publishing adds a version, rollback points back at an earlier one. A template is a
  ``message`` (sent), a ``layout`` (wraps a message's HTML) or a ``partial`` (included).
- **Categories** (``notify_categories``): what a message is about (``billing``,
  ``security``); a ``critical`` one (password reset) bypasses preferences and carries no
  unsubscribe link.
- **Recipients** (``notify_recipients``): profiles set by ``identify`` (email, phone, push
  targets, locale, time zone, quiet hours); their **preferences** per category and channel
  (``notify_preferences``); **topics** and their subscribers for fan-out.
- **Suppressions** (``notify_suppressions``): addresses nothing is sent to, from hard
  bounces, complaints, unsubscribes or an operator.
- **Providers** (``notify_providers``): a tenant's ordered providers per channel; their
  credentials are a secret of the secrets service, named by path, never stored here.
  **Senders** (``notify_senders``): email identities, with the DKIM key's secret.
- **Messages** (``notify_messages``) and their status history (``notify_message_events``);
  in-app **inbox** items (``notify_inbox``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class NotifyTemplate(TenantScoped, Base):
    __tablename__ = "notify_templates"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_notify_templates_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    #: ``message``, ``layout`` or ``partial``.
    kind: Mapped[str] = mapped_column(String(16), default="message")
    #: The category of its messages (``message`` templates).
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    #: The version sends use; ``None`` until the first publish.
    published_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The newest version's number.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    #: A flag whose variation names the version to send (an A/B test), if any...
    experiment_flag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: ... evaluated in this flags environment (:mod:`keel.notify.service.experiments`).
    experiment_environment: Mapped[str | None] = mapped_column(String(63), nullable=True)
    #: Bumped by every change: the ETag ``If-Match`` checks.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyTemplateVersion(TenantScoped, Base):
    """One immutable version of a template's content (:mod:`keel.notify.templating`)."""

    __tablename__ = "notify_template_versions"
    __table_args__ = (
        UniqueConstraint("template_id", "number", name="uq_notify_template_versions_number"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    template_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notify_templates.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyCategory(TenantScoped, Base):
    __tablename__ = "notify_categories"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_notify_categories_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Sent whatever the recipient's preferences, quiet hours and unsubscribes say.
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Channels a recipient receives the category on unless they opt out.
    default_channels: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Most messages of the category one recipient receives per hour (``None``: no limit).
    hourly_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyRecipient(TenantScoped, Base):
    """A recipient's profile, keyed by the service's own user id (``external_id``)."""

    __tablename__ = "notify_recipients"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_notify_recipients_external_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    external_id: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: ``[{"kind": "fcm", "token": ...} | {"kind": "webpush", "endpoint", "p256dh", "auth"}]``
    push_targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: ``{"start": "22:00", "end": "08:00"}`` in the recipient's time zone, or ``None``.
    quiet_hours: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    #: Free-form traits a template may use (``{{ recipient.name }}``).
    traits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyPreference(TenantScoped, Base):
    """A recipient's choice for one category on one channel."""

    __tablename__ = "notify_preferences"
    __table_args__ = (
        UniqueConstraint(
            "recipient_id", "category", "channel", name="uq_notify_preferences_choice"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    recipient_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notify_recipients.id", ondelete="CASCADE"), index=True
    )
    category: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyTopicSubscription(TenantScoped, Base):
    """A recipient subscribed to a topic: a send to the topic reaches every subscriber."""

    __tablename__ = "notify_topic_subscriptions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "topic", "recipient_id", name="uq_notify_topic_member"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    topic: Mapped[str] = mapped_column(String(128))
    recipient_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notify_recipients.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifySuppression(TenantScoped, Base):
    """An address (normalised email or E.164 phone) nothing is sent to on ``channel``."""

    __tablename__ = "notify_suppressions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "channel", "address", name="uq_notify_suppressions"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    #: ``bounce``, ``complaint``, ``unsubscribe`` or ``manual``.
    reason: Mapped[str] = mapped_column(String(16))
    #: An unsubscribe from one category suppresses that category only (``None``: all).
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyProvider(TenantScoped, Base):
    """One provider of a channel; a channel's providers are tried in ``position`` order."""

    __tablename__ = "notify_providers"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_notify_providers_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    #: ``smtp``, ``ses``, ``postmark``, ``twilio``, ``fcm``, ``webpush``, ``slack``.
    kind: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer, default=0)
    #: Settings that are not secret (host, port, region, sender).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The KV secret (``mount/path``) whose fields are the provider's credentials.
    credentials_secret: Mapped[str | None] = mapped_column(String(512), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifySender(TenantScoped, Base):
    """An email identity: the ``From`` address, and the DKIM key that signs its mail."""

    __tablename__ = "notify_senders"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_notify_senders_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    #: ``Acme <no-reply@acme.example>``.
    address: Mapped[str] = mapped_column(String(400))
    reply_to: Mapped[str | None] = mapped_column(String(400), nullable=True)
    dkim_domain: Mapped[str | None] = mapped_column(String(253), nullable=True)
    dkim_selector: Mapped[str | None] = mapped_column(String(63), nullable=True)
    #: The KV secret (``mount/path``) whose ``private_key`` field is the DKIM key (PEM).
    dkim_secret: Mapped[str | None] = mapped_column(String(512), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyMessage(TenantScoped, Base):
    """One message to one recipient on one channel, and where it stands."""

    __tablename__ = "notify_messages"
    __table_args__ = (
        Index("ix_notify_messages_recipient", "tenant_id", "recipient_id", "created_at"),
        Index("ix_notify_messages_batch", "tenant_id", "batch_id"),
        Index("ix_notify_messages_unsubscribe", "unsubscribe_token_hash"),
        Index("ix_notify_messages_digest", "tenant_id", "digest_key", "status"),
        # A provider's delivery report names its own message id (webhooks).
        Index("ix_notify_messages_provider_id", "tenant_id", "provider", "provider_message_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    channel: Mapped[str] = mapped_column(String(16))
    recipient_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: The address sent to (email, E.164 phone, or a chat provider's name), normalised.
    address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    template: Mapped[str] = mapped_column(String(128))
    template_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The template's data; dropped once the message is final, and by erasure.
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Key-value data a push message carries to the app on the device (not rendered).
    push_data: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    #: ``queued``, ``sent``, ``delivered``, ``opened``, ``clicked``, ``bounced``,
    #: ``complained``, ``failed``, ``suppressed``, ``skipped``, ``digested``.
    status: Mapped[str] = mapped_column(String(16), default="queued")
    #: When it is (or was) due: the send's schedule, moved out of quiet hours.
    send_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    batch_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: Events of one digest key are collected into one message at the window's end.
    digest_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: The A/B variation the recipient was assigned, when the template runs an experiment.
    variation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Keyed hash of the message's unsubscribe token (RFC 8058), when it carries one.
    unsubscribe_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NotifyMessageEvent(TenantScoped, Base):
    """One step of a message's status history."""

    __tablename__ = "notify_message_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notify_messages.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    #: What the step adds (a provider, an error, a clicked URL); never message content.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyInboxItem(TenantScoped, Base):
    """An in-app message in a recipient's inbox."""

    __tablename__ = "notify_inbox"
    __table_args__ = (
        Index("ix_notify_inbox_recipient", "tenant_id", "recipient_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    recipient_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notify_recipients.id", ondelete="CASCADE")
    )
    message_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

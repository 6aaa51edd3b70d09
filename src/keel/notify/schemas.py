"""Wire models of the notification API (``/notify/v1/...``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

ChannelName = Literal["email", "sms", "push", "chat", "in_app"]
TemplateName = Annotated[str, Field(min_length=1, max_length=128, examples=["welcome"])]
Tag = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- templates -------------------------------------------------------------------------------


class TemplatePublish(_Strict):
    """A new version of a template, published at once (refused when it does not render).

    ``content`` of a ``message``: ``{"default_locale": "en", "layout": null, "locales":
    {"en": {"subject": ..., "html": ..., "text": ..., "sms": ..., "push_title": ...,
    "push_body": ..., "chat": ...}}, "sample_data": {...}}``; of a ``layout`` or ``partial``:
    ``{"html": "..."}`` (a layout places the message with ``{{ content }}``)."""

    kind: Literal["message", "layout", "partial"] = "message"
    content: dict[str, Any]
    category: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=2000)
    note: str = Field(default="", max_length=2000)


class TemplateRollback(_Strict):
    version: int = Field(ge=1, le=1_000_000)


class Template(_FromRow):
    name: str
    kind: str
    category: str | None
    description: str
    published_version: int | None
    latest_version: int
    #: The flag (and its flags environment) whose experiment chooses the version of each
    #: send (``PUT /templates/{name}/experiment``), if any.
    experiment_flag: str | None = None
    experiment_environment: str | None = None
    version: int
    created_at: datetime
    updated_at: datetime


class TemplateExperiment(_Strict):
    """Run the template's sends through a flags experiment: each variation's value is a
    version number of the template; each recipient is served one, always the same."""

    flag: str = Field(min_length=1, max_length=128, examples=["welcome-subject"])
    environment: str = Field(min_length=1, max_length=63, examples=["production"])


class TemplateVersion(_FromRow):
    number: int
    content: dict[str, Any]
    note: str
    created_by: str | None
    created_at: datetime


class TemplateList(BaseModel):
    templates: list[Template]


class PreviewRequest(_Strict):
    channel: Literal["email", "sms", "push", "chat"] = "email"
    #: The template's variables (default: its ``sample_data``).
    data: dict[str, Any] | None = None
    locale: str | None = Field(default=None, max_length=35)
    #: A version other than the published one.
    version: int | None = Field(default=None, ge=1, le=1_000_000)


class TestSend(_Strict):
    """Send one message of the template now, to an address you name (yourself)."""

    channel: Literal["email", "sms", "chat"] = "email"
    to: str = Field(max_length=320)
    #: The template's variables (default: its ``sample_data``).
    data: dict[str, Any] | None = None
    locale: str | None = Field(default=None, max_length=35)
    #: A version other than the published one.
    version: int | None = Field(default=None, ge=1, le=1_000_000)


class Preview(BaseModel):
    locale: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    sms: str | None = None
    push_title: str | None = None
    push_body: str | None = None
    chat: str | None = None


# -- messages --------------------------------------------------------------------------------


class DigestSpec(_Strict):
    """Collect sends with this key into one message at the end of the window; the template
    sees them as ``events`` (a list of each send's data)."""

    key: str = Field(min_length=1, max_length=200)
    window_seconds: int = Field(ge=60, le=7 * 86400)


class MessageCreate(_Strict):
    channel: ChannelName = "email"
    template: TemplateName
    #: The recipient's id (``identify`` gave their profile) ...
    recipient: str | None = Field(default=None, max_length=200)
    #: ... or an address: an email, a phone number, or a chat provider's name.
    to: str | None = Field(default=None, max_length=320)
    data: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    locale: str | None = Field(default=None, max_length=35)
    #: When to send (with an offset); or ``send_at_local``: a wall time in the recipient's
    #: own time zone (``2026-12-07T09:00``).
    send_at: AwareDatetime | None = None
    send_at_local: datetime | None = None
    digest: DigestSpec | None = None
    #: A push message's key-value data for the app on the device (FCM ``data``, the Web Push
    #: payload's ``data``): not rendered, at most 4 KB.
    push_data: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=1024)]] | None
    ) = Field(default=None, max_length=20)


class BatchRecipient(_Strict):
    recipient: str | None = Field(default=None, max_length=200)
    to: str | None = Field(default=None, max_length=320)
    data: dict[str, Any] = Field(default_factory=dict)


class BatchCreate(_Strict):
    channel: ChannelName = "email"
    template: TemplateName
    #: The recipients, each with its own data ...
    recipients: list[BatchRecipient] = Field(default_factory=list)
    #: ... or a topic: every recipient subscribed to it (one of the two).
    topic: str | None = Field(default=None, max_length=128)
    #: Variables every message shares (each recipient's ``data`` adds to them).
    data: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    send_at: AwareDatetime | None = None


class BatchAccepted(BaseModel):
    batch_id: str
    messages: int


class MessageEvent(_FromRow):
    status: str
    detail: dict[str, Any]
    at: datetime


class Message(_FromRow):
    id: str
    channel: str
    template: str
    template_version: int | None
    #: The A/B variation of the template's experiment the message was sent (if any).
    variation: str | None = None
    category: str | None
    critical: bool
    status: str
    tags: list[str]
    send_at: datetime
    sent_at: datetime | None
    provider: str | None
    provider_message_id: str | None
    attempts: int
    error: str | None
    batch_id: str | None
    created_at: datetime


class MessageDetail(Message):
    events: list[MessageEvent]


class MessageList(BaseModel):
    messages: list[Message]


# -- recipients ------------------------------------------------------------------------------


class Identify(_Strict):
    """The fields to set (a field left out keeps its value; ``null`` clears it)."""

    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    push_targets: list[dict[str, str]] | None = Field(default=None, max_length=20)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    quiet_hours: dict[str, str] | None = None
    traits: dict[str, Any] | None = None


class Recipient(BaseModel):
    id: str
    email: str | None
    phone: str | None
    push_targets: list[dict[str, Any]]
    locale: str | None
    timezone: str | None
    quiet_hours: dict[str, str] | None
    traits: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


class PreferenceChoice(_Strict):
    category: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    enabled: bool


class Preferences(BaseModel):
    preferences: list[PreferenceChoice]


class TopicSubscribe(_Strict):
    recipients: list[Annotated[str, Field(max_length=200)]] = Field(min_length=1, max_length=1000)


class TopicMembers(BaseModel):
    topic: str
    recipients: list[str]


class InboxItem(_FromRow):
    id: str
    message_id: str | None
    title: str
    body: str
    data: dict[str, Any]
    category: str | None
    read_at: datetime | None
    created_at: datetime


class Inbox(BaseModel):
    items: list[InboxItem]
    unread: int


class MarkRead(_Strict):
    ids: list[str] = Field(default_factory=list, max_length=1000)
    #: Every item of the inbox (``ids`` ignored).
    all: bool = False


# -- settings --------------------------------------------------------------------------------


class CategoryPut(_Strict):
    critical: bool = False
    description: str = Field(default="", max_length=2000)
    default_channels: list[ChannelName] = Field(default_factory=list)
    hourly_limit: int | None = Field(default=None, ge=1, le=100_000)


class Category(_FromRow):
    name: str
    critical: bool
    description: str
    default_channels: list[str]
    hourly_limit: int | None
    version: int


class CategoryList(BaseModel):
    categories: list[Category]


class ProviderPut(_Strict):
    kind: str = Field(max_length=16, examples=["smtp"])
    #: The kind's settings (not secret): host, port, region, base_url...
    settings: dict[str, Any] = Field(default_factory=dict)
    #: The KV secret (``mount/path``) whose fields are the kind's credentials.
    credentials_secret: str | None = Field(default=None, max_length=512)
    #: Providers of a channel are tried in this order (failover).
    position: int = Field(default=0, ge=0, le=1000)
    enabled: bool = True


class Provider(_FromRow):
    name: str
    channel: str
    kind: str
    position: int
    settings: dict[str, Any]
    credentials_secret: str | None
    enabled: bool
    version: int


class ProviderList(BaseModel):
    providers: list[Provider]


class SenderPut(_Strict):
    address: str = Field(max_length=400, examples=["Acme <no-reply@acme.example>"])
    reply_to: str | None = Field(default=None, max_length=400)
    dkim_domain: str | None = Field(default=None, max_length=253)
    dkim_selector: str | None = Field(default=None, max_length=63)
    #: The KV secret (``mount/path``) whose ``private_key`` field is the DKIM key (PEM).
    dkim_secret: str | None = Field(default=None, max_length=512)


class Sender(_FromRow):
    name: str
    address: str
    reply_to: str | None
    dkim_domain: str | None
    dkim_selector: str | None
    dkim_secret: str | None
    version: int


class SuppressionCreate(_Strict):
    channel: Literal["email", "sms"] = "email"
    address: str = Field(max_length=320)
    reason: Literal["bounce", "complaint", "unsubscribe", "manual"] = "manual"
    category: str | None = Field(default=None, max_length=64)


class Suppression(_FromRow):
    channel: str
    address: str
    reason: str
    category: str | None
    created_at: datetime


class SuppressionList(BaseModel):
    suppressions: list[Suppression]

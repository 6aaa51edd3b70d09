"""``NotifyClient``: Keel's notification endpoints (``/notify/v1``) — send email, SMS, push,
chat and in-app messages from published templates, in batches, scheduled or digested; set
recipients' profiles and preferences; read a message's status history and the inbox.

Every send carries an ``Idempotency-Key`` (the caller's ``idempotency_key=`` or a new UUID
per call), the same on every retry of the call, and Keel keeps the first answer 24 hours: a
send the SDK retried after a lost answer, or that the caller repeats with the same key, is
one message. A send is therefore retried like an idempotent call (connection errors, 429,
502-504); everything else Keel refuses is a ``keel_client.http.ClientError`` carrying the
problem detail (422 a template that does not render with the context, an address that does
not parse, a schedule in the past; 404 an unknown template or recipient; 403 a missing
``notify:<scope>:<level>`` permission).
"""

from __future__ import annotations

import enum
import types
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Unpack
from urllib.parse import quote

from keel_client._service import ServiceClient
from keel_client.http import RequestOptions
from keel_client.notify._models import (
    BatchRecipient,
    BatchRef,
    Channel,
    Inbox,
    Message,
    MessageDetail,
    MessageRef,
    Preference,
    Recipient,
    TemplateVersion,
)

__all__ = ["DEFAULT_PUSH_TEMPLATE", "PUSH_TEMPLATE_CONTENT", "UNSET", "NotifyClient", "Unset"]

API = "/notify/v1"

#: The template :meth:`NotifyClient.send_push` sends with when given none. Keel has no
#: built-in templates: publish it once per tenant with :data:`PUSH_TEMPLATE_CONTENT`.
DEFAULT_PUSH_TEMPLATE = "push.default"
#: A push template whose title and body are the ``title`` and ``body`` of the send
#: (also what an in-app message of it shows)::
#:
#:     await keel.notify.publish_template(DEFAULT_PUSH_TEMPLATE, PUSH_TEMPLATE_CONTENT)
PUSH_TEMPLATE_CONTENT: Mapping[str, Any] = types.MappingProxyType(
    {
        "default_locale": "en",
        "locales": {"en": {"push_title": "{{ title }}", "push_body": "{{ body }}"}},
        "sample_data": {"title": "Your order shipped", "body": "It arrives on Tuesday."},
    }
)


class Unset(enum.Enum):
    """The type of :data:`UNSET`: an argument not given, unlike ``None`` (which clears)."""

    UNSET = enum.auto()


#: "Leave this profile field as it is" in :meth:`NotifyClient.identify`.
UNSET = Unset.UNSET

#: A digest: ``(key, window)``, the window in seconds (60 to a week) or a ``timedelta``.
Digest = tuple[str, float | timedelta]


def _seconds(window: float | timedelta) -> int:
    return round(window.total_seconds() if isinstance(window, timedelta) else window)


def _aware(name: str, when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (datetime.now(UTC) + ...)")
    return when.astimezone(UTC).isoformat()


def _segment(value: str) -> str:
    """``value`` as one path segment (a recipient id may hold ``@``, ``:`` or ``+``)."""
    if not value:
        raise ValueError("an id is not empty")
    return quote(value, safe="")


class NotifyClient(ServiceClient):
    """Keel's notifications from a service: sends, recipients, preferences, status, inbox.

    Example::

        async with Keel.from_env() as keel:
            ref = await keel.notify.send_email(
                to="user@example.com", template="welcome", context={"name": "John"},
                tags=["onboarding"], schedule_at=None,
            )
            await keel.notify.identify("user-42", email="ada@example.com",
                                       timezone="Europe/Paris")
            await keel.notify.send_email(recipient="user-42", template="welcome",
                                         context={"name": "Ada"})
            detail = await keel.notify.message(ref.id)   # status and history

    Templates are Keel's (published with :meth:`publish_template` or the API): a send names
    one and gives its variables as ``context``; Keel checks that it renders before it
    accepts the send. Addresses (``to=``) or recipients' ids (``recipient=``, whose profile
    gives the address, locale, time zone, quiet hours and preferences): one of the two.

    Alone: ``NotifyClient("https://keel.internal", auth=api_key)`` or
    ``NotifyClient.from_env()``, with a pool of its own; or ``api=`` a shared
    ``BaseAPIClient`` (what ``Keel`` does: ``keel.notify``).
    """

    # -- sending -------------------------------------------------------------------------------

    async def send(
        self,
        template: str,
        *,
        channel: Channel | str = Channel.EMAIL,
        to: str | None = None,
        recipient: str | None = None,
        context: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        locale: str | None = None,
        send_at: datetime | None = None,
        send_at_local: datetime | None = None,
        digest: Digest | None = None,
        push_data: Mapping[str, str] | None = None,
        **options: Unpack[RequestOptions],
    ) -> MessageRef:
        """Send one message of ``template`` on ``channel`` to an address (``to``: an email,
        an E.164 phone number, a chat provider's name) or a recipient's id (``recipient``).

        ``send_at``: not before then (aware); ``send_at_local``: a wall time (naive) in the
        recipient's own time zone; ``digest=(key, window_seconds)``: sends with the key to
        the same recipient within the window become one message at its end, the template
        seeing each send's context in ``events``. Quiet hours, preferences and suppressions
        apply (``ref.status`` ``skipped`` or ``suppressed``: nothing will be sent);
        ``critical`` categories ignore them. ``idempotency_key`` (default: a new UUID)
        makes a repeated call one message."""
        body: dict[str, Any] = {
            "channel": Channel(channel).value,
            "template": template,
            "data": dict(context or {}),
        }
        if to is not None:
            body["to"] = to
        if recipient is not None:
            body["recipient"] = recipient
        if tags:
            body["tags"] = list(tags)
        if locale is not None:
            body["locale"] = locale
        if send_at is not None:
            body["send_at"] = _aware("send_at", send_at)
        if send_at_local is not None:
            if send_at_local.tzinfo is not None:
                raise ValueError("send_at_local is a wall time in the recipient's zone: naive")
            body["send_at_local"] = send_at_local.isoformat()
        if digest is not None:
            key, window = digest
            body["digest"] = {"key": key, "window_seconds": _seconds(window)}
        if push_data is not None:
            body["push_data"] = {str(name): str(value) for name, value in push_data.items()}
        key = options.get("idempotency_key") or str(uuid.uuid4())
        call: RequestOptions = {**options, "idempotency_key": key}
        response = await self.api.post(f"{API}/messages", json=body, **call)
        message = Message.model_validate(response.json())
        # 200 rather than 202: the send joined a digest's message already waiting.
        return MessageRef(
            message.id, message.status, key, message, joined_digest=response.status_code == 200
        )

    async def send_email(
        self,
        to: str | None = None,
        *,
        template: str,
        context: Mapping[str, Any] | None = None,
        recipient: str | None = None,
        tags: Sequence[str] = (),
        schedule_at: datetime | None = None,
        locale: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> MessageRef:
        """Email ``template`` to the address ``to`` (or the profile of ``recipient``), now
        or at ``schedule_at`` (aware). See :meth:`send`."""
        return await self.send(
            template, channel=Channel.EMAIL, to=to, recipient=recipient, context=context,
            tags=tags, locale=locale, send_at=schedule_at, **options,
        )  # fmt: skip

    async def send_sms(
        self,
        to: str | None = None,
        *,
        template: str,
        context: Mapping[str, Any] | None = None,
        recipient: str | None = None,
        tags: Sequence[str] = (),
        schedule_at: datetime | None = None,
        locale: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> MessageRef:
        """Text ``template``'s ``sms`` part to the phone number ``to`` (E.164, or national
        with a ``+`` country code) or the profile of ``recipient``. See :meth:`send`."""
        return await self.send(
            template, channel=Channel.SMS, to=to, recipient=recipient, context=context,
            tags=tags, locale=locale, send_at=schedule_at, **options,
        )  # fmt: skip

    async def send_push(
        self,
        user_id: str,
        *,
        title: str | None = None,
        body: str | None = None,
        data: Mapping[str, Any] | None = None,
        template: str = DEFAULT_PUSH_TEMPLATE,
        context: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        schedule_at: datetime | None = None,
        **options: Unpack[RequestOptions],
    ) -> MessageRef:
        """Push to every device of recipient ``user_id`` (their ``push_targets``).

        A push is rendered from a template like every message: ``template`` (default
        :data:`DEFAULT_PUSH_TEMPLATE`, which the tenant publishes once with
        :data:`PUSH_TEMPLATE_CONTENT`) sees ``title``, ``body`` and ``data`` beside
        ``context``. The device receives the rendered title and body, and ``data`` (its
        values as strings, at most 4 KB) with the message's id as ``message_id``."""
        variables: dict[str, Any] = dict(context or {})
        if title is not None:
            variables["title"] = title
        if body is not None:
            variables["body"] = body
        if data is not None:
            variables["data"] = dict(data)
        return await self.send(
            template, channel=Channel.PUSH, recipient=user_id, context=variables, tags=tags,
            send_at=schedule_at, push_data=data, **options,
        )  # fmt: skip

    async def send_batch(
        self,
        template: str,
        recipients: Sequence[str | BatchRecipient] = (),
        *,
        to: Sequence[str] = (),
        topic: str | None = None,
        channel: Channel | str = Channel.EMAIL,
        context: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        schedule_at: datetime | None = None,
        **options: Unpack[RequestOptions],
    ) -> BatchRef:
        """One message of ``template`` to each of ``recipients`` (recipients' ids, or
        :class:`BatchRecipient` with data of their own) and each address of ``to``, up to
        100,000 in one call, accepted all or none — or to every subscriber of ``topic``;
        ``context`` is what every message shares.

        Preferences, suppressions and quiet hours apply as each message is delivered;
        ``messages(batch_id=ref.batch_id)`` lists them."""
        entries = [
            entry.to_wire() if isinstance(entry, BatchRecipient) else {"recipient": entry}
            for entry in recipients
        ]
        if isinstance(to, str):
            raise TypeError("to is a sequence of addresses, not one string")
        entries += [{"to": address} for address in to]
        if bool(entries) == (topic is not None):
            raise ValueError("a batch needs recipients or addresses, or a topic: one of them")
        body: dict[str, Any] = {
            "channel": Channel(channel).value,
            "template": template,
            "data": dict(context or {}),
        }
        if topic is not None:
            body["topic"] = topic
        else:
            body["recipients"] = entries
        if tags:
            body["tags"] = list(tags)
        if schedule_at is not None:
            body["send_at"] = _aware("schedule_at", schedule_at)
        key = options.get("idempotency_key") or str(uuid.uuid4())
        call: RequestOptions = {**options, "idempotency_key": key}
        response = await self.api.post(f"{API}/messages/batch", json=body, **call)
        answer = response.json()
        return BatchRef(answer["batch_id"], int(answer["messages"]), key)

    # -- messages ------------------------------------------------------------------------------

    async def message(self, message_id: str, **options: Unpack[RequestOptions]) -> MessageDetail:
        """A message's status and its history (``queued → sent → delivered → opened``...)."""
        return await self.api.get(
            f"{API}/messages/{_segment(message_id)}", response_model=MessageDetail, **options
        )

    async def messages(
        self,
        *,
        recipient: str | None = None,
        batch_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        **options: Unpack[RequestOptions],
    ) -> list[Message]:
        """Messages, newest first, of a recipient, a batch or a status (up to ``limit``)."""
        params: dict[str, str | int] = {"limit": limit}
        for name, value in (("recipient", recipient), ("batch_id", batch_id), ("status", status)):
            if value is not None:
                params[name] = value
        response = await self.api.get(f"{API}/messages", params=params, **options)
        return [Message.model_validate(item) for item in response.json()["messages"]]

    # -- recipients ----------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, user_ids: Sequence[str], **options: Unpack[RequestOptions]
    ) -> list[str]:
        """Subscribe recipients (identified before) to ``topic``; a batch to the topic
        reaches every subscriber (``send_batch(template, topic=...)``). The topic's
        subscribers, after."""
        if isinstance(user_ids, str):
            raise TypeError("user_ids is a sequence of recipient ids, not one string")
        response = await self.api.post(
            f"{API}/topics/{_segment(topic)}/subscribers",
            json={"recipients": list(user_ids)},
            **options,
        )
        return list(response.json()["recipients"])

    async def unsubscribe(
        self, topic: str, user_id: str, **options: Unpack[RequestOptions]
    ) -> None:
        """Take recipient ``user_id`` off ``topic``."""
        await self.api.delete(
            f"{API}/topics/{_segment(topic)}/subscribers/{_segment(user_id)}", **options
        )

    async def identify(
        self,
        user_id: str,
        *,
        email: str | Unset | None = UNSET,
        phone: str | Unset | None = UNSET,
        locale: str | Unset | None = UNSET,
        timezone: str | Unset | None = UNSET,
        quiet_hours: Mapping[str, str] | Unset | None = UNSET,
        push_targets: Sequence[Mapping[str, str]] | Unset | None = UNSET,
        traits: Mapping[str, Any] | Unset | None = UNSET,
        **options: Unpack[RequestOptions],
    ) -> Recipient:
        """Create or update the profile of ``user_id``: a field not given keeps its value,
        ``None`` clears it. ``timezone`` is an IANA name (``Asia/Tokyo``); ``quiet_hours``
        ``{"start": "22:00", "end": "08:00"}`` in that zone; ``push_targets`` ``{"kind":
        "fcm", "token": ...}`` or ``{"kind": "webpush", "endpoint", "p256dh", "auth"}``;
        ``traits`` what templates see as ``recipient.<trait>``."""
        fields: dict[str, Any] = {}
        given: dict[str, Any] = {"email": email, "phone": phone, "locale": locale,
                                 "timezone": timezone, "quiet_hours": quiet_hours,
                                 "push_targets": push_targets, "traits": traits}  # fmt: skip
        for name, value in given.items():
            if value is UNSET:
                continue
            if isinstance(value, Mapping):
                value = dict(value)
            elif name == "push_targets" and value is not None:
                value = [dict(target) for target in value]
            fields[name] = value
        return await self.api.put(
            f"{API}/recipients/{_segment(user_id)}",
            json=fields,
            response_model=Recipient,
            **options,
        )

    async def recipient(self, user_id: str, **options: Unpack[RequestOptions]) -> Recipient:
        """The profile of ``user_id`` (a ``ClientError`` 404 before ``identify``)."""
        return await self.api.get(
            f"{API}/recipients/{_segment(user_id)}", response_model=Recipient, **options
        )

    async def preferences(
        self, user_id: str, **options: Unpack[RequestOptions]
    ) -> list[Preference]:
        """The choices ``user_id`` made (a category and channel not listed is on)."""
        response = await self.api.get(
            f"{API}/recipients/{_segment(user_id)}/preferences", **options
        )
        return [Preference.of(item) for item in response.json()["preferences"]]

    async def set_preferences(
        self,
        user_id: str,
        choices: Sequence[Preference | tuple[str, str, bool]],
        **options: Unpack[RequestOptions],
    ) -> list[Preference]:
        """Record ``user_id``'s choices (``Preference(category or "*", channel or "*",
        enabled)``), each replacing the earlier one for its pair; answers all of them.
        Critical categories (password reset) ignore them."""
        body = {
            "preferences": [
                (choice if isinstance(choice, Preference) else Preference(*choice)).to_wire()
                for choice in choices
            ]
        }
        response = await self.api.put(
            f"{API}/recipients/{_segment(user_id)}/preferences", json=body, **options
        )
        return [Preference.of(item) for item in response.json()["preferences"]]

    async def inbox(
        self,
        user_id: str,
        *,
        unread_only: bool = False,
        limit: int = 50,
        **options: Unpack[RequestOptions],
    ) -> Inbox:
        """``user_id``'s in-app messages, newest first, and how many are unread."""
        params: dict[str, str | int] = {"limit": limit}
        if unread_only:
            params["unread_only"] = "true"
        return await self.api.get(
            f"{API}/recipients/{_segment(user_id)}/inbox",
            params=params,
            response_model=Inbox,
            **options,
        )

    async def mark_read(
        self,
        user_id: str,
        ids: Sequence[str] | Literal["all"],
        **options: Unpack[RequestOptions],
    ) -> Inbox:
        """Mark inbox items read (their ids, or ``"all"``); answers the inbox."""
        if isinstance(ids, str):
            if ids != "all":
                raise TypeError('ids is a sequence of item ids, or "all"')
            body: dict[str, Any] = {"all": True}
        else:
            body = {"ids": list(ids)}
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(
            f"{API}/recipients/{_segment(user_id)}/inbox/read",
            json=body,
            response_model=Inbox,
            **call,
        )

    async def erase(self, user_id: str, **options: Unpack[RequestOptions]) -> None:
        """Erase ``user_id``'s data (profile, preferences, topics, inbox; their messages keep
        only their status history). Needs ``notify:recipients:admin``."""
        await self.api.delete(f"{API}/recipients/{_segment(user_id)}", **options)

    # -- templates -----------------------------------------------------------------------------

    async def publish_template(
        self,
        name: str,
        content: Mapping[str, Any],
        *,
        category: str | None = None,
        description: str | None = None,
        note: str = "",
        **options: Unpack[RequestOptions],
    ) -> TemplateVersion:
        """Publish a new version of message template ``name`` (made on its first publish);
        sends use it at once. ``content``: ``{"default_locale", "locales": {locale: {
        "subject", "html", "text", "sms", "push_title", "push_body", "chat"}},
        "sample_data"}``. Keel refuses (422) a version that does not render with its
        ``sample_data``. Needs ``notify:templates:write``."""
        body: dict[str, Any] = {"content": dict(content), "note": note}
        if category is not None:
            body["category"] = category
        if description is not None:
            body["description"] = description
        return await self.api.post(
            f"{API}/templates/{_segment(name)}/versions",
            json=body,
            response_model=TemplateVersion,
            **options,
        )

"""Accepting messages: one send or a batch becomes ``notify_messages`` rows and delivery jobs
on the jobs engine, in one transaction (a message exists if and only if its job does).

A single send is checked whole before it is accepted — the template is published and
renders with the data, the address parses, the schedule is not in the past — so a bad one is
a 4xx and nothing is sent. A batch is checked for what can be checked in bulk (the data has
the template's variables; addresses parse) and each recipient's preferences are applied at
delivery.

**Invariants**: a message is delivered at most by one attempt at a time and at most once
recorded as sent; nothing non-critical reaches a suppressed address or an opted-out
recipient (:mod:`.recipients`); a message's data leaves the database once it is final.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.bulk import insert_many
from keel.core.db import utcnow
from keel.core.errors import NotFound, PayloadTooLarge, ValidationFailed
from keel.core.ids import new_id
from keel.core.lazy import lazy_module
from keel.core.tenancy import bind_tenant
from keel.jobs.service import enqueue_task, enqueue_tasks
from keel.notify.channels import Channel
from keel.notify.models import NotifyMessage, NotifyMessageEvent, NotifyRecipient
from keel.notify.service import experiments
from keel.notify.service.policy import quiet_hours_end, recipient_view, render_channel
from keel.notify.service.recipients import (
    check_email,
    check_external_id,
    check_locale,
    check_phone,
    get_category,
    is_suppressed,
    opted_out,
)
from keel.notify.service.runtime import DELIVER
from keel.notify.service.templates import TemplateKind, get_version, load_library

if TYPE_CHECKING:
    from keel.notify import templating
else:
    templating = lazy_module("keel.notify.templating")


if TYPE_CHECKING:
    from sqlalchemy import Table

#: Channels a message goes out on: the providers' and the in-app inbox.
MESSAGE_CHANNELS = frozenset({*(channel.value for channel in Channel), "in_app"})
#: A schedule this far in the past is taken as "now" (clocks differ); further is refused.
SCHEDULE_SKEW = timedelta(seconds=30)
#: The furthest ahead a message may be scheduled.
MAX_SCHEDULE_AHEAD = timedelta(days=366)
#: A digest's window: 1 minute to 7 days.
MIN_DIGEST_SECONDS, MAX_DIGEST_SECONDS = 60, 7 * 24 * 3600
#: Tags one message carries at most.
MAX_TAGS = 20


@dataclass(frozen=True)
class Digest:
    """Collect messages of ``key`` for ``window_seconds`` into one (``{{ events }}``)."""

    key: str
    window_seconds: int


@dataclass(frozen=True)
class SendRequest:
    channel: str
    template: str
    #: The recipient's id (their profile gives the address, locale, time zone)...
    recipient: str | None = None
    #: ... or an address: email, phone number (E.164), or a chat provider's name.
    to: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    tags: Sequence[str] = ()
    locale: str | None = None
    #: When to send (aware), or ``send_at_local``: a wall time in the recipient's zone.
    send_at: datetime | None = None
    send_at_local: datetime | None = None
    digest: Digest | None = None
    batch_id: str | None = None
    #: Key-value data a push message carries to the device (not rendered).
    push_data: Mapping[str, str] | None = None
    #: A version other than the published one (a test send of a draft's predecessor...).
    template_version: int | None = None


@dataclass(frozen=True)
class Accepted:
    message: NotifyMessage
    #: ``False`` when a digest took the send into a message already waiting.
    created: bool = True


def _check_data_size(data: Mapping[str, Any], limit: int) -> None:
    try:  # a batch checks 100,000 of these: orjson is about ten times json's speed
        size = len(orjson.dumps(data, default=str))
    except TypeError:  # what orjson refuses (an integer past 64 bits) json writes
        size = len(json.dumps(data, separators=(",", ":"), default=str).encode())
    if size > limit:
        raise PayloadTooLarge(f"data is {size} bytes of JSON; the limit is {limit}.")


def _check_tags(tags: Sequence[str]) -> list[str]:
    if len(tags) > MAX_TAGS or any(not 1 <= len(tag) <= 64 for tag in tags):
        raise ValidationFailed(f"At most {MAX_TAGS} tags of 1-64 characters.")
    return list(tags)


def _template_error(error: templating.TemplateError) -> ValidationFailed:
    return ValidationFailed(f"The template does not render with this data: {error}")


def address_for(channel: str, recipient: NotifyRecipient | None, to: str | None) -> str | None:
    """Where a message of ``channel`` goes: ``to`` when given, else the recipient's."""
    if channel == Channel.email:
        value = to if to is not None else recipient.email if recipient else None
        if value is None:
            raise ValidationFailed("The recipient has no email address.")
        return check_email(value)
    if channel == Channel.sms:
        value = to if to is not None else recipient.phone if recipient else None
        if value is None:
            raise ValidationFailed("The recipient has no phone number.")
        return check_phone(value)
    if channel == Channel.push:
        if recipient is None or not recipient.push_targets:
            raise ValidationFailed("Push messages go to a recipient with push targets.")
        return None
    if channel == "in_app":
        if recipient is None:
            raise ValidationFailed("In-app messages go to a recipient.")
        return None
    return to  # chat: the provider's name, or the tenant's first chat provider


def resolve_send_at(
    request: SendRequest, recipient: NotifyRecipient | None, now: datetime
) -> datetime:
    if request.send_at is not None and request.send_at_local is not None:
        raise ValidationFailed("A message has send_at or send_at_local, not both.")
    if request.send_at_local is not None:
        if request.send_at_local.tzinfo is not None:
            raise ValidationFailed("send_at_local is a wall time without an offset.")
        zone = ZoneInfo(recipient.timezone if recipient and recipient.timezone else "UTC")
        wanted = request.send_at_local.replace(tzinfo=zone)
    elif request.send_at is not None:
        if request.send_at.tzinfo is None:
            raise ValidationFailed("send_at has an offset (or Z).")
        wanted = request.send_at
    else:
        return now
    if wanted < now - SCHEDULE_SKEW:
        raise ValidationFailed("The schedule is in the past.")
    if wanted > now + MAX_SCHEDULE_AHEAD:
        raise ValidationFailed("A message is scheduled at most a year ahead.")
    return max(wanted.astimezone(UTC), now)


async def _hourly_count(
    session: AsyncSession, recipient_id: str, category: str, now: datetime
) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(NotifyMessage)
        .where(
            NotifyMessage.recipient_id == recipient_id,
            NotifyMessage.category == category,
            NotifyMessage.created_at >= now - timedelta(hours=1),
            NotifyMessage.status.not_in(["suppressed", "skipped"]),
        )
    )
    return int(count or 0)


def _event(
    message_id: str, tenant_id: str, status: str, detail: dict[str, Any], at: datetime
) -> NotifyMessageEvent:
    return NotifyMessageEvent(
        tenant_id=tenant_id, message_id=message_id, status=status, detail=detail, at=at
    )


async def accept(
    session: AsyncSession,
    tenant_id: str,
    request: SendRequest,
    *,
    max_data_bytes: int,
    hash_context_key: experiments.ContextKeyHasher | None = None,
) -> Accepted:
    """Check and accept one send (see the module's text); the message, ``queued`` with its
    delivery job (or ``suppressed``/``skipped``, and no job). With ``hash_context_key``, a
    template's A/B experiment chooses the version (:mod:`.experiments`)."""
    bind_tenant(session, tenant_id)
    if request.channel not in MESSAGE_CHANNELS:
        raise ValidationFailed(
            f"Channel {request.channel!r} is not one of {sorted(MESSAGE_CHANNELS)}."
        )
    if (request.recipient is None) == (request.to is None) and request.channel != Channel.chat:
        raise ValidationFailed("A message names a recipient or an address (to), one of the two.")
    _check_data_size(request.data, max_data_bytes)
    tags = _check_tags(request.tags)
    locale = check_locale(request.locale) if request.locale else None
    template, version = await get_version(
        session, tenant_id, request.template, request.template_version
    )
    if template.kind != TemplateKind.message:
        raise ValidationFailed(f"Template {template.name!r} is a {template.kind}, not a message.")
    recipient = None
    if request.recipient is not None:
        check_external_id(request.recipient)
        recipient = await session.scalar(
            select(NotifyRecipient).where(NotifyRecipient.external_id == request.recipient)
        )
        if recipient is None:
            raise NotFound(f"No recipient {request.recipient!r}: identify them first.")
    address = address_for(request.channel, recipient, request.to)
    experiment_key = experiments.context_key(request.recipient, address)
    variant = await experiments.choose_version(
        session,
        tenant_id,
        template,
        experiment_key if request.template_version is None else None,
        hash_context_key=hash_context_key,
    )
    if variant is not None:
        version = variant.version
    now = utcnow()
    send_at = resolve_send_at(request, recipient, now)
    category = await get_category(session, tenant_id, template.category)
    critical = bool(category and category.critical)

    data = dict(request.data)
    rendered_data = {"events": [data]} if request.digest else data
    content = templating.TemplateContent.model_validate(version.content)
    library = await load_library(session, tenant_id)
    try:  # a send that would fail to render is refused now, not at delivery
        templating.render(
            content,
            locale=locale or (recipient.locale if recipient else None),
            data={**rendered_data, "recipient": recipient_view(recipient)},
            library=library,
            channel=render_channel(request.channel),
        )
    except templating.TemplateError as exc:
        raise _template_error(exc) from None

    if request.digest is not None:
        digest = _check_digest(request.digest)
        waiting = await session.scalar(
            select(NotifyMessage)
            .where(
                NotifyMessage.digest_key == digest.key,
                # One template renders the digest: another's events would not render in it.
                NotifyMessage.template == template.name,
                NotifyMessage.status == "queued",
                NotifyMessage.recipient_id == (recipient.id if recipient else None),
                NotifyMessage.address == address,
                NotifyMessage.channel == request.channel,
                NotifyMessage.send_at > now,
            )
            .with_for_update()
            .limit(1)
        )
        if waiting is not None:
            events = list((waiting.data or {}).get("events", []))
            waiting.data = {"events": [*events, data]}
            _check_data_size(waiting.data, max_data_bytes * 10)
            waiting.updated_at = now
            session.add(_event(waiting.id, tenant_id, "digested", {"events": len(events) + 1}, now))
            await session.flush()
            return Accepted(waiting, created=False)
        send_at = max(send_at, now + timedelta(seconds=digest.window_seconds))

    status, reason = "queued", None
    if not critical:
        if await is_suppressed(session, request.channel, address, template.category):
            status, reason = "suppressed", "the address is on the suppression list"
        elif recipient is not None and await opted_out(
            session, recipient.id, template.category, request.channel
        ):
            status, reason = "skipped", "the recipient turned this category off"
        elif (
            recipient is not None
            and category is not None
            and category.hourly_limit is not None
            and await _hourly_count(session, recipient.id, category.name, now)
            >= category.hourly_limit
        ):
            status, reason = "skipped", "the category's hourly limit for the recipient"
        elif recipient is not None:
            quiet_end = quiet_hours_end(send_at, recipient.quiet_hours, recipient.timezone)
            if quiet_end is not None:
                send_at = quiet_end

    message = NotifyMessage(
        id=new_id(),
        channel=request.channel,
        recipient_id=recipient.id if recipient else None,
        address=address,
        template=template.name,
        template_version=version.number,
        locale=locale,
        category=template.category,
        critical=critical,
        data=rendered_data if status == "queued" else None,
        tags=tags,
        push_data=_check_push_data(request.channel, request.push_data),
        status=status,
        send_at=send_at,
        batch_id=request.batch_id,
        digest_key=request.digest.key if request.digest else None,
        variation=variant.variation if variant else None,
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    await session.flush()
    if variant is not None and hash_context_key is not None and status == "queued":
        await experiments.record_exposures(
            session,
            tenant_id,
            template,
            [(experiment_key, variant)],
            hash_context_key=hash_context_key,
        )
    detail = {"reason": reason} if reason else {"send_at": send_at.isoformat()}
    session.add(_event(message.id, tenant_id, status, detail, now))
    if status == "queued":
        await enqueue_task(
            session,
            tenant_id,
            DELIVER,
            {"messages": [message.id]},
            run_at=send_at if send_at > now else None,
        )
    await session.flush()
    return Accepted(message)


#: The most push data one message carries (FCM's limit is 4 KB).
MAX_PUSH_DATA_BYTES = 4096


def _check_push_data(channel: str, data: Mapping[str, str] | None) -> dict[str, str] | None:
    if data is None:
        return None
    if channel != Channel.push:
        raise ValidationFailed("push_data is for push messages.")
    if "message_id" in data:
        raise ValidationFailed("push_data's message_id is Keel's: the message's own id.")
    if sum(len(key) + len(value) for key, value in data.items()) > MAX_PUSH_DATA_BYTES:
        raise ValidationFailed(f"push_data is at most {MAX_PUSH_DATA_BYTES} characters.")
    return dict(data)


def _check_digest(digest: Digest) -> Digest:
    if not 1 <= len(digest.key) <= 200:
        raise ValidationFailed("A digest key is 1-200 characters.")
    if not MIN_DIGEST_SECONDS <= digest.window_seconds <= MAX_DIGEST_SECONDS:
        raise ValidationFailed(
            f"A digest window is {MIN_DIGEST_SECONDS} to {MAX_DIGEST_SECONDS} seconds."
        )
    return digest


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchEntry:
    recipient: str | None = None
    to: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchAccepted:
    batch_id: str
    messages: int
    jobs: int


async def accept_batch(
    session: AsyncSession,
    tenant_id: str,
    *,
    channel: str,
    template_name: str,
    entries: Sequence[BatchEntry],
    data: Mapping[str, Any],
    tags: Sequence[str],
    send_at: datetime | None,
    max_data_bytes: int,
    max_batch: int,
    chunk: int,
    hash_context_key: experiments.ContextKeyHasher | None = None,
) -> BatchAccepted:
    """Accept one message per entry (the batch's ``data`` under each entry's own), in bulk
    inserts, delivered in jobs of ``chunk`` messages; preferences, suppressions and quiet
    hours are applied as each is delivered. With ``hash_context_key``, a template's A/B
    experiment chooses each entry's version (:mod:`.experiments`)."""
    bind_tenant(session, tenant_id)
    if channel not in MESSAGE_CHANNELS:
        raise ValidationFailed(f"Channel {channel!r} is not one of {sorted(MESSAGE_CHANNELS)}.")
    if not 1 <= len(entries) <= max_batch:
        raise ValidationFailed(f"A batch has 1 to {max_batch} recipients.")
    tags = _check_tags(tags)
    _check_data_size(data, max_data_bytes)
    template, version = await get_version(session, tenant_id, template_name)
    if template.kind != TemplateKind.message:
        raise ValidationFailed(f"Template {template.name!r} is a {template.kind}, not a message.")
    now = utcnow()
    when = resolve_send_at(SendRequest(channel, template_name, send_at=send_at), None, now)
    content = templating.TemplateContent.model_validate(version.content)
    library = await load_library(session, tenant_id)
    wanted = templating.variables(content, library, channel=render_channel(channel)) - {"recipient"}
    category = await get_category(session, tenant_id, template.category)

    external_ids = list({entry.recipient for entry in entries if entry.recipient is not None})
    recipients: dict[str, NotifyRecipient] = {}
    for start in range(0, len(external_ids), 1000):
        for row in await session.scalars(
            select(NotifyRecipient).where(
                NotifyRecipient.external_id.in_(external_ids[start : start + 1000])
            )
        ):
            recipients[row.external_id] = row
    batch_id = new_id()
    rows: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        if (entry.recipient is None) == (entry.to is None):
            raise ValidationFailed(f"Entry {index}: a recipient or an address (to), one of two.")
        recipient = recipients.get(entry.recipient) if entry.recipient is not None else None
        if entry.recipient is not None and recipient is None:
            raise NotFound(f"Entry {index}: no recipient {entry.recipient!r}.")
        try:
            address = address_for(channel, recipient, entry.to)
        except ValidationFailed as exc:
            raise ValidationFailed(f"Entry {index}: {exc.detail}") from None
        merged = {**data, **entry.data}
        if entry.data:  # a message of a batch has the limit a single send has
            try:
                _check_data_size(merged, max_data_bytes)
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(f"Entry {index}: {exc.detail}") from None
        absent = wanted - set(merged)
        if absent:
            raise ValidationFailed(
                f"Entry {index}: the data lacks variables: {', '.join(sorted(absent))}"
            )
        rows.append(
            {
                "id": new_id(),
                "recipient_id": recipient.id if recipient else None,
                "address": address,
                "template_version": version.number,
                "data": merged,
            }
        )
    await experiments.assign_batch(
        session,
        tenant_id,
        template,
        rows,
        [
            experiments.context_key(entry.recipient, row["address"])
            for entry, row in zip(entries, rows, strict=True)
        ],
        library=library,
        channel=render_channel(channel),
        hash_context_key=hash_context_key,
    )
    shared = {
        "tenant_id": tenant_id,
        "channel": channel,
        "template": template.name,
        "category": template.category,
        "critical": bool(category and category.critical),
        "tags": tags,
        "status": "queued",
        "send_at": when,
        "batch_id": batch_id,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    await insert_many(session, cast("Table", NotifyMessage.__table__), rows, same=shared)
    chunks = [
        {"messages": [row["id"] for row in rows[start : start + chunk]]}
        for start in range(0, len(rows), chunk)
    ]
    jobs = await enqueue_tasks(
        session, tenant_id, DELIVER, chunks, run_at=when if when > now else None
    )
    return BatchAccepted(batch_id, len(rows), len(jobs))


# -- reading ---------------------------------------------------------------------------------


async def get_message(
    session: AsyncSession, tenant_id: str, message_id: str
) -> tuple[NotifyMessage, list[NotifyMessageEvent]]:
    bind_tenant(session, tenant_id)
    message = await session.scalar(select(NotifyMessage).where(NotifyMessage.id == message_id))
    if message is None:
        raise NotFound(f"No message {message_id!r}.")
    events = list(
        await session.scalars(
            select(NotifyMessageEvent)
            .where(NotifyMessageEvent.message_id == message_id)
            .order_by(NotifyMessageEvent.at, NotifyMessageEvent.id)
        )
    )
    return message, events


async def list_messages(
    session: AsyncSession,
    tenant_id: str,
    *,
    recipient: str | None = None,
    batch_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[NotifyMessage]:
    bind_tenant(session, tenant_id)
    query = select(NotifyMessage).order_by(NotifyMessage.created_at.desc(), NotifyMessage.id)
    if recipient is not None:
        found = await session.scalar(
            select(NotifyRecipient.id).where(NotifyRecipient.external_id == recipient)
        )
        if found is None:
            return []
        query = query.where(NotifyMessage.recipient_id == found)
    if batch_id is not None:
        query = query.where(NotifyMessage.batch_id == batch_id)
    if status is not None:
        query = query.where(NotifyMessage.status == status)
    return list(await session.scalars(query.limit(limit)))

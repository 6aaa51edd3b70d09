"""Recipients and what they chose: profiles (``identify``), preferences per category and
channel, topic subscriptions, categories, the suppression list, and erasure.

**Invariant**: nothing non-critical reaches an address on the suppression list or a
recipient who turned the category off on that channel — checked when a message is accepted
and again when it is delivered (a preference can change in between).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.lazy import lazy_module
from keel.core.tenancy import bind_tenant
from keel.notify.channels import Channel
from keel.notify.models import (
    NotifyCategory,
    NotifyInboxItem,
    NotifyMessage,
    NotifyPreference,
    NotifyRecipient,
    NotifySuppression,
    NotifyTopicSubscription,
)

if TYPE_CHECKING:
    from keel.notify import email as mail
else:
    mail = lazy_module("keel.notify.email")


_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,200}$")
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,3}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
#: Push targets one recipient may register.
MAX_PUSH_TARGETS = 20
#: Channels a preference names (``in_app`` is the inbox).
PREFERENCE_CHANNELS = frozenset({*(channel.value for channel in Channel), "in_app"})
#: A preference's category or channel that stands for all of them.
EVERY = "*"


class SuppressionReason:
    bounce = "bounce"
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    manual = "manual"
    ALL = frozenset({bounce, complaint, unsubscribe, manual})


def check_external_id(external_id: str) -> str:
    if not _EXTERNAL_ID.fullmatch(external_id):
        raise ValidationFailed(
            "A recipient id is 1-200 letters, digits and _.:@+- (the service's own user id)."
        )
    return external_id


def check_category(name: str) -> str:
    if not _CATEGORY.fullmatch(name):
        raise ValidationFailed(f"Category {name!r} is not 1-64 lower-case letters, digits, _.-.")
    return name


def check_topic(name: str) -> str:
    if not _TOPIC.fullmatch(name):
        raise ValidationFailed(f"Topic {name!r} is not 1-128 letters, digits, _.:-.")
    return name


def check_locale(locale: str) -> str:
    """A BCP 47-shaped tag (``en``, ``pt-BR``, ``zh-Hant-TW``); ``_`` is read as ``-``."""
    if not _LOCALE.fullmatch(locale):
        raise ValidationFailed(f"Locale {locale!r} is not a language tag such as en or pt-BR.")
    return locale.replace("_", "-")


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(
            f"Time zone {name!r} is not an IANA zone such as Asia/Tokyo."
        ) from None
    return name


def parse_clock(value: str) -> time:
    match = _CLOCK.fullmatch(value)
    if match is None:
        raise ValidationFailed(f"{value!r} is not a time of day HH:MM.")
    return time(int(match.group(1)), int(match.group(2)))


def check_quiet_hours(quiet: Mapping[str, str] | None) -> dict[str, str] | None:
    if quiet is None:
        return None
    if set(quiet) != {"start", "end"}:
        raise ValidationFailed('Quiet hours are {"start": "HH:MM", "end": "HH:MM"}.')
    start, end = parse_clock(quiet["start"]), parse_clock(quiet["end"])
    if start == end:
        raise ValidationFailed("Quiet hours start and end at different times.")
    return {"start": quiet["start"], "end": quiet["end"]}


def check_email(address: str) -> str:
    try:
        return mail.normalize_address(address)
    except mail.InvalidAddress as exc:
        raise ValidationFailed(str(exc)) from None


def check_phone(number: str) -> str:
    try:
        return mail.normalize_phone(number)
    except mail.InvalidPhone as exc:
        raise ValidationFailed(str(exc)) from None


def check_push_targets(targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if len(targets) > MAX_PUSH_TARGETS:
        raise ValidationFailed(f"A recipient has at most {MAX_PUSH_TARGETS} push targets.")
    checked = []
    for target in targets:
        kind = target.get("kind")
        if (
            kind == "fcm"
            and isinstance(target.get("token"), str)
            and set(target)
            == {
                "kind",
                "token",
            }
        ):
            checked.append({"kind": "fcm", "token": target["token"]})
        elif kind == "webpush" and set(target) == {"kind", "endpoint", "p256dh", "auth"}:
            if not str(target["endpoint"]).startswith("https://"):
                raise ValidationFailed("A Web Push endpoint is an https:// URL.")
            checked.append({key: str(target[key]) for key in target})
        else:
            raise ValidationFailed(
                'A push target is {"kind": "fcm", "token": ...} or {"kind": "webpush", '
                '"endpoint": ..., "p256dh": ..., "auth": ...}.'
            )
    return checked


# -- recipients ------------------------------------------------------------------------------


async def find_recipient(
    session: AsyncSession, tenant_id: str, external_id: str
) -> NotifyRecipient | None:
    bind_tenant(session, tenant_id)
    return await session.scalar(
        select(NotifyRecipient).where(NotifyRecipient.external_id == external_id)
    )


async def get_recipient(session: AsyncSession, tenant_id: str, external_id: str) -> NotifyRecipient:
    recipient = await find_recipient(session, tenant_id, external_id)
    if recipient is None:
        raise NotFound(f"No recipient {external_id!r}.")
    return recipient


#: Profile fields ``identify`` sets; a field it is not given keeps its value.
PROFILE_FIELDS = ("email", "phone", "push_targets", "locale", "timezone", "quiet_hours", "traits")


def check_profile(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The profile fields of ``fields``, checked and normalised (``None`` clears one)."""
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in PROFILE_FIELDS:
            raise ValidationFailed(f"{name!r} is not a profile field.")
        if value is None:
            checked[name] = [] if name == "push_targets" else {} if name == "traits" else None
        elif name == "email":
            checked[name] = check_email(value)
        elif name == "phone":
            checked[name] = check_phone(value)
        elif name == "push_targets":
            checked[name] = check_push_targets(value)
        elif name == "locale":
            checked[name] = check_locale(value)
        elif name == "timezone":
            checked[name] = check_timezone(value)
        elif name == "quiet_hours":
            checked[name] = check_quiet_hours(value)
        else:
            checked[name] = dict(value)
    return checked


async def identify(
    session: AsyncSession, tenant_id: str, external_id: str, fields: Mapping[str, Any]
) -> tuple[NotifyRecipient, bool]:
    """Create or update the profile of ``external_id``; whether it was created."""
    check_external_id(external_id)
    profile = check_profile(fields)
    recipient = await find_recipient(session, tenant_id, external_id)
    created = recipient is None
    if recipient is None:
        recipient = NotifyRecipient(external_id=external_id, push_targets=[], traits={})
        session.add(recipient)
    for name, value in profile.items():
        setattr(recipient, name, value)
    if not created:
        recipient.version += 1
        recipient.updated_at = utcnow()
    await session.flush()
    return recipient, created


async def erase_recipient(session: AsyncSession, tenant_id: str, external_id: str) -> int:
    """Forget a recipient: the profile, preferences, subscriptions and inbox go; their
    messages keep only their status history (no address, no data). The suppression list
    keeps their addresses (an unsubscribe must outlive the profile). How many messages
    were stripped."""
    recipient = await get_recipient(session, tenant_id, external_id)
    stripped = await session.execute(
        update(NotifyMessage)
        .where(NotifyMessage.recipient_id == recipient.id)
        .values(address=None, data=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    for model in (NotifyPreference, NotifyTopicSubscription, NotifyInboxItem):
        await session.execute(delete(model).where(model.recipient_id == recipient.id))
    await session.delete(recipient)
    await session.flush()
    return int(getattr(stripped, "rowcount", 0) or 0)


# -- preferences -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    category: str
    channel: str
    enabled: bool


async def preferences_of(session: AsyncSession, recipient: NotifyRecipient) -> list[Choice]:
    rows = await session.scalars(
        select(NotifyPreference)
        .where(NotifyPreference.recipient_id == recipient.id)
        .order_by(NotifyPreference.category, NotifyPreference.channel)
    )
    return [Choice(row.category, row.channel, row.enabled) for row in rows]


async def set_preferences(
    session: AsyncSession, recipient: NotifyRecipient, choices: Iterable[Choice]
) -> list[Choice]:
    """Record the recipient's choices (each replaces the one for its category and channel)."""
    wanted = {}
    for choice in choices:
        # ``*`` is every category or every channel (:func:`opted_out` reads it).
        if choice.category != EVERY:
            check_category(choice.category)
        if choice.channel != EVERY and choice.channel not in PREFERENCE_CHANNELS:
            raise ValidationFailed(
                f"Channel {choice.channel!r} is not one of {sorted(PREFERENCE_CHANNELS)}."
            )
        wanted[(choice.category, choice.channel)] = choice.enabled
    existing = {
        (row.category, row.channel): row
        for row in await session.scalars(
            select(NotifyPreference).where(NotifyPreference.recipient_id == recipient.id)
        )
    }
    now = utcnow()
    for (category, channel), enabled in wanted.items():
        row = existing.get((category, channel))
        if row is None:
            session.add(
                NotifyPreference(
                    recipient_id=recipient.id,
                    category=category,
                    channel=channel,
                    enabled=enabled,
                    updated_at=now,
                )
            )
        else:
            row.enabled = enabled
            row.updated_at = now
    await session.flush()
    return await preferences_of(session, recipient)


async def opted_out(
    session: AsyncSession, recipient_id: str, category: str | None, channel: str
) -> bool:
    """Whether the recipient turned ``category`` off on ``channel`` (``*`` rows: all; a
    message without a category answers to the ``*`` rows alone)."""
    categories = [EVERY] if category is None else [category, EVERY]
    enabled = await session.scalar(
        select(NotifyPreference.enabled)
        .where(
            NotifyPreference.recipient_id == recipient_id,
            NotifyPreference.category.in_(categories),
            NotifyPreference.channel.in_([channel, EVERY]),
        )
        # The most specific choice wins: the category's over "*", the channel's over "*".
        .order_by((NotifyPreference.category == EVERY), (NotifyPreference.channel == EVERY))
        .limit(1)
    )
    return enabled is False


# -- categories ------------------------------------------------------------------------------


async def put_category(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    critical: bool,
    description: str = "",
    default_channels: Sequence[str] = (),
    hourly_limit: int | None = None,
) -> tuple[NotifyCategory, bool]:
    check_category(name)
    bind_tenant(session, tenant_id)
    for channel in default_channels:
        if channel not in PREFERENCE_CHANNELS:
            raise ValidationFailed(
                f"Channel {channel!r} is not one of {sorted(PREFERENCE_CHANNELS)}."
            )
    category = await session.scalar(select(NotifyCategory).where(NotifyCategory.name == name))
    created = category is None
    if category is None:
        category = NotifyCategory(name=name)
        session.add(category)
    else:
        category.version += 1
        category.updated_at = utcnow()
    category.critical = critical
    category.description = description
    category.default_channels = list(default_channels)
    category.hourly_limit = hourly_limit
    await session.flush()
    return category, created


async def get_category(
    session: AsyncSession, tenant_id: str, name: str | None
) -> NotifyCategory | None:
    if name is None:
        return None
    bind_tenant(session, tenant_id)
    return await session.scalar(select(NotifyCategory).where(NotifyCategory.name == name))


async def list_categories(session: AsyncSession, tenant_id: str) -> list[NotifyCategory]:
    bind_tenant(session, tenant_id)
    return list(await session.scalars(select(NotifyCategory).order_by(NotifyCategory.name)))


# -- suppressions ----------------------------------------------------------------------------


def normalise_address(channel: str, address: str) -> str:
    """How the suppression list spells an address. An email address is lowercased whole:
    mailbox providers deliver ``Ada@example.com`` and ``ada@example.com`` to one inbox, and
    an unsubscribe must hold for both (suppressing too much is the safe side)."""
    if channel == Channel.email:
        return check_email(address).lower()
    if channel == Channel.sms:
        return check_phone(address)
    raise ValidationFailed("Suppressions are for email and sms addresses.")


async def suppress(
    session: AsyncSession,
    tenant_id: str,
    channel: str,
    address: str,
    reason: str,
    category: str | None = None,
) -> tuple[NotifySuppression, bool]:
    """Put ``address`` on the suppression list (of one ``category``, or all); whether new."""
    if reason not in SuppressionReason.ALL:
        raise ValidationFailed(f"Reason {reason!r} is not one of {sorted(SuppressionReason.ALL)}.")
    address = normalise_address(channel, address)
    bind_tenant(session, tenant_id)
    existing = await session.scalar(
        select(NotifySuppression).where(
            NotifySuppression.channel == channel, NotifySuppression.address == address
        )
    )
    if existing is not None:
        if category is None and existing.category is not None:
            existing.category = None  # widened to every category
            existing.reason = reason
            await session.flush()
        return existing, False
    row = NotifySuppression(channel=channel, address=address, reason=reason, category=category)
    session.add(row)
    await session.flush()
    return row, True


async def unsuppress(session: AsyncSession, tenant_id: str, channel: str, address: str) -> None:
    address = normalise_address(channel, address)
    bind_tenant(session, tenant_id)
    row = await session.scalar(
        select(NotifySuppression).where(
            NotifySuppression.channel == channel, NotifySuppression.address == address
        )
    )
    if row is None:
        raise NotFound("That address is not suppressed.")
    await session.delete(row)
    await session.flush()


async def list_suppressions(
    session: AsyncSession, tenant_id: str, channel: str | None = None, limit: int = 100
) -> list[NotifySuppression]:
    bind_tenant(session, tenant_id)
    query = select(NotifySuppression).order_by(NotifySuppression.created_at.desc()).limit(limit)
    if channel is not None:
        query = query.where(NotifySuppression.channel == channel)
    return list(await session.scalars(query))


async def is_suppressed(
    session: AsyncSession, channel: str, address: str | None, category: str | None
) -> bool:
    """Whether ``address`` is suppressed for ``category`` (in the session's tenant)."""
    if address is None or channel not in (Channel.email, Channel.sms):
        return False
    if channel == Channel.email:
        address = address.lower()  # as normalise_address spells it
    found = await session.scalar(
        select(NotifySuppression.id)
        .where(
            NotifySuppression.channel == channel,
            NotifySuppression.address == address,
            or_(NotifySuppression.category.is_(None), NotifySuppression.category == category),
        )
        .limit(1)
    )
    return found is not None


async def suppressions_among(
    session: AsyncSession, channel: str, addresses: Sequence[str]
) -> dict[str, str | None]:
    """The suppressed ones of ``addresses`` on ``channel`` (in the session's tenant), each
    with the category it is suppressed for (``None``: all): what :func:`is_suppressed` reads
    for one address, read for a group of messages in one statement."""
    if channel not in (Channel.email, Channel.sms) or not addresses:
        return {}
    if channel == Channel.email:
        addresses = [address.lower() for address in addresses]  # as normalise_address does
    rows = await session.execute(
        select(NotifySuppression.address, NotifySuppression.category).where(
            NotifySuppression.channel == channel,
            NotifySuppression.address.in_(sorted(set(addresses))),
        )
    )
    return {address: category for address, category in rows}


def suppression_applies(
    suppressions: Mapping[str, str | None], channel: str, address: str | None, category: str | None
) -> bool:
    """Whether ``address`` is suppressed for ``category``, read off :func:`suppressions_among`
    (the answer :func:`is_suppressed` gives)."""
    if address is None or channel not in (Channel.email, Channel.sms):
        return False
    if channel == Channel.email:
        address = address.lower()  # as normalise_address spells it
    if address not in suppressions:
        return False
    suppressed_for = suppressions[address]
    return suppressed_for is None or suppressed_for == category


# -- topics ----------------------------------------------------------------------------------


async def subscribe(
    session: AsyncSession, tenant_id: str, topic: str, external_ids: Sequence[str]
) -> int:
    """Subscribe recipients (who must exist) to ``topic``; how many were new."""
    check_topic(topic)
    bind_tenant(session, tenant_id)
    recipients = {
        row.external_id: row.id
        for row in await session.execute(
            select(NotifyRecipient.external_id, NotifyRecipient.id).where(
                NotifyRecipient.external_id.in_(list(external_ids))
            )
        )
    }
    missing = [external_id for external_id in external_ids if external_id not in recipients]
    if missing:
        raise NotFound(f"No recipient {missing[0]!r}.")
    already = set(
        await session.scalars(
            select(NotifyTopicSubscription.recipient_id).where(
                NotifyTopicSubscription.topic == topic,
                NotifyTopicSubscription.recipient_id.in_(list(recipients.values())),
            )
        )
    )
    new = [rid for rid in dict.fromkeys(recipients.values()) if rid not in already]
    for recipient_id in new:
        session.add(NotifyTopicSubscription(topic=topic, recipient_id=recipient_id))
    await session.flush()
    return len(new)


async def unsubscribe_from_topic(
    session: AsyncSession, tenant_id: str, topic: str, external_id: str
) -> None:
    recipient = await get_recipient(session, tenant_id, check_external_id(external_id))
    await session.execute(
        delete(NotifyTopicSubscription).where(
            NotifyTopicSubscription.topic == check_topic(topic),
            NotifyTopicSubscription.recipient_id == recipient.id,
        )
    )


async def topic_members(session: AsyncSession, tenant_id: str, topic: str) -> list[str]:
    """The external ids of ``topic``'s subscribers."""
    bind_tenant(session, tenant_id)
    return list(
        await session.scalars(
            select(NotifyRecipient.external_id)
            .join(
                NotifyTopicSubscription, NotifyTopicSubscription.recipient_id == NotifyRecipient.id
            )
            .where(NotifyTopicSubscription.topic == check_topic(topic))
            .order_by(NotifyRecipient.external_id)
        )
    )

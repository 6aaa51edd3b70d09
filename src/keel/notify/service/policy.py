"""Small rules that accepting and delivering share: which template parts a channel uses,
quiet hours, and the backoff of a message whose providers failed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

from keel.core.lazy import lazy_module
from keel.notify.models import NotifyRecipient
from keel.notify.service.recipients import parse_clock

if TYPE_CHECKING:
    from keel.notify import templating
else:
    templating = lazy_module("keel.notify.templating")


#: The backoff of a message whose providers all failed: 30 s, 1, 2, 4 ... minutes, to an hour.
FIRST_RETRY_SECONDS, LONGEST_RETRY_SECONDS = 30.0, 3600.0


def render_channel(channel: str) -> templating.Channel:
    """The template parts a channel's messages are made of (the inbox uses push's)."""
    return cast("templating.Channel", "push" if channel == "in_app" else channel)


def quiet_hours_end(
    moment: datetime, quiet: Mapping[str, str] | None, zone_name: str | None
) -> datetime | None:
    """When the quiet hours that hold ``moment`` end (``None``: not in quiet hours), read in
    the recipient's zone (UTC when they gave none)."""
    if not quiet:
        return None
    zone = ZoneInfo(zone_name or "UTC")
    local = moment.astimezone(zone)
    start, end = parse_clock(quiet["start"]), parse_clock(quiet["end"])
    clock = local.time().replace(tzinfo=None)
    # Quiet hours may run over midnight (22:00-08:00).
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return None
    end_day = local.date() if clock < end else local.date() + timedelta(days=1)
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(ZoneInfo("UTC"))


def recipient_view(recipient: NotifyRecipient | None) -> dict[str, Any]:
    """What a template sees as ``recipient``: the id and traits, never other addresses."""
    if recipient is None:
        return {}
    return {"id": recipient.external_id, **(recipient.traits or {})}


def retry_delay(attempts: int, retry_after: float | None) -> float:
    """Seconds before a message's next attempt: doubling from 30 s to an hour, and never
    sooner than the provider asked (``Retry-After``)."""
    wait: float = min(FIRST_RETRY_SECONDS * 2.0 ** max(attempts - 1, 0), LONGEST_RETRY_SECONDS)
    return max(wait, retry_after or 0.0)

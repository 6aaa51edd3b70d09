"""Links in a message that come back to Keel: the RFC 8058 unsubscribe, the open pixel and
click redirects.

- **Unsubscribe**: every non-critical email carries an opaque random token; Keel keeps only
  its keyed hash (``notify_messages.unsubscribe_token_hash``). ``POST`` to its URL
  unsubscribes the address from the message's category, with no login and no redirect;
  ``GET`` only shows a page with the button (a mail scanner following links must not
  unsubscribe anyone).
- **Opens and clicks**: the pixel's and each link's URL carry a keyed hash of the message
  and the destination, so Keel redirects only to the links it put in its own messages (no
  open redirect) and counts only its own messages' events.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import NotFound
from keel.core.tenancy import bind_tenant
from keel.notify.models import NotifyMessage, NotifyMessageEvent
from keel.notify.service.recipients import SuppressionReason, suppress

#: Statuses a message moves on from only to these (a later event never moves it back).
_PROGRESSION = {
    "queued": 0,
    "sent": 1,
    "delivered": 2,
    "opened": 3,
    "clicked": 4,
}
#: Final statuses tracking never changes.
_TERMINAL = frozenset({"bounced", "complained", "failed", "suppressed", "skipped"})


def new_unsubscribe_token() -> str:
    return secrets.token_urlsafe(24)


def unsubscribe_token_hash(keyring: Keyring, token: str) -> str:
    return keyring.token_hash(f"notify-unsubscribe:{token}")


def link_signature(keyring: Keyring, message_id: str, target: str) -> str:
    """The keyed hash a tracked link carries: only Keel can make one for a message."""
    return keyring.token_hash(f"notify-link:{message_id}:{target}")[:32]


def open_pixel_url(base_url: str, keyring: Keyring, message_id: str) -> str:
    signature = link_signature(keyring, message_id, "open")
    return f"{base_url}/notify/v1/t/{message_id}/open.gif?s={signature}"


@functools.lru_cache(maxsize=4096)
def _quoted_target(target: str) -> str:
    # A newsletter's links are the same in every message of a batch: quoted once each.
    return quote_plus(target)


def click_url(base_url: str, keyring: Keyring, message_id: str, target: str) -> str:
    # As urlencode({"u": target, "s": signature}) writes it (the signature is hex).
    signature = link_signature(keyring, message_id, target)
    return f"{base_url}/notify/v1/t/{message_id}/click?u={_quoted_target(target)}&s={signature}"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url}/notify/v1/unsubscribe/{token}"


def is_signed(keyring: Keyring, message_id: str, target: str, signature: str) -> bool:
    expected = link_signature(keyring, message_id, target)
    return hmac.compare_digest(expected.encode(), signature.encode())


def record_status(
    session: AsyncSession,
    message: NotifyMessage,
    status: str,
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Add ``status`` to the message's history; the message's own status moves only forward
    (an open after a click stays a click; nothing changes a bounced message's status)."""
    now = at or utcnow()
    session.add(
        NotifyMessageEvent(
            tenant_id=message.tenant_id,
            message_id=message.id,
            status=status,
            detail=detail or {},
            at=now,
        )
    )
    current = message.status
    if current in _TERMINAL:
        return
    if status in _TERMINAL or _PROGRESSION.get(status, -1) > _PROGRESSION.get(current, -1):
        message.status = status
        message.updated_at = now


async def message_by_id(session: AsyncSession, message_id: str) -> NotifyMessage | None:
    """A message of any tenant, for the public tracking endpoints (which know no tenant);
    the session is bound to the message's tenant before anything else is read."""
    message = await session.scalar(
        select(NotifyMessage)
        .where(NotifyMessage.id == message_id)
        .execution_options(all_tenants=True)
    )
    if message is not None:
        bind_tenant(session, message.tenant_id)
    return message


async def message_by_unsubscribe_token(
    session: AsyncSession, keyring: Keyring, token: str
) -> NotifyMessage:
    if not 16 <= len(token) <= 64:
        raise NotFound("This unsubscribe link is not known.")
    message = await session.scalar(
        select(NotifyMessage)
        .where(NotifyMessage.unsubscribe_token_hash == unsubscribe_token_hash(keyring, token))
        .execution_options(all_tenants=True)
    )
    if message is None:
        raise NotFound("This unsubscribe link is not known.")
    bind_tenant(session, message.tenant_id)
    return message


async def unsubscribe(session: AsyncSession, message: NotifyMessage) -> bool:
    """Suppress the message's address for its category (every category when it has none);
    whether the address was not suppressed before."""
    if message.address is None:  # erased since: nothing left to send to
        return False
    _, created = await suppress(
        session,
        message.tenant_id,
        message.channel,
        message.address,
        SuppressionReason.unsubscribe,
        category=message.category,
    )
    record_status(session, message, "unsubscribed", {"category": message.category})
    return created

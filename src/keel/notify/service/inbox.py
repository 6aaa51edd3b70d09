"""The in-app inbox: what delivery of ``in_app`` messages writes, read and marked read by the
recipient's application."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.notify.models import NotifyInboxItem, NotifyRecipient


async def list_inbox(
    session: AsyncSession, recipient: NotifyRecipient, *, unread_only: bool, limit: int
) -> tuple[list[NotifyInboxItem], int]:
    """The newest ``limit`` items, and how many items are unread in all."""
    query = (
        select(NotifyInboxItem)
        .where(NotifyInboxItem.recipient_id == recipient.id)
        .order_by(NotifyInboxItem.created_at.desc(), NotifyInboxItem.id)
        .limit(limit)
    )
    if unread_only:
        query = query.where(NotifyInboxItem.read_at.is_(None))
    items = list(await session.scalars(query))
    unread = await session.scalar(
        select(func.count())
        .select_from(NotifyInboxItem)
        .where(NotifyInboxItem.recipient_id == recipient.id, NotifyInboxItem.read_at.is_(None))
    )
    return items, int(unread or 0)


async def mark_read(
    session: AsyncSession, recipient: NotifyRecipient, ids: Sequence[str] | None
) -> None:
    """Mark the items ``ids`` (every item when ``None``) of the recipient's inbox read."""
    statement = (
        update(NotifyInboxItem)
        .where(NotifyInboxItem.recipient_id == recipient.id, NotifyInboxItem.read_at.is_(None))
        .values(read_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if ids is not None:
        statement = statement.where(NotifyInboxItem.id.in_(list(ids)))
    await session.execute(statement)

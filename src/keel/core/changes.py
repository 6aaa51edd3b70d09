"""Change streams: what changed, kept in order, so a subscriber can resume where it left off.

A service records a change in the same transaction as the change itself; after commit it is
published on the broadcast (in-process or Redis). Subscribers read Server-Sent Events: first
what they missed since ``Last-Event-ID`` (from this table), then live events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.tenancy import TenantScoped


class ChangeEvent(TenantScoped, Base):
    """One change of one stream (``secrets``, ``config``, ``flags``, ...) of a tenant."""

    __tablename__ = "change_events"
    __table_args__ = (Index("ix_change_events_stream", "tenant_id", "stream", "seq"),)

    #: Increasing over the whole table: the SSE event id.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    stream: Mapped[str] = mapped_column(String(32))
    #: What changed, e.g. ``secret/apps/billing`` (never a value).
    subject: Mapped[str] = mapped_column(String(600))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

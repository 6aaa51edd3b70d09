"""Platform keys kept in the database, sealed by the master key.

``keel_keys`` holds keys the platform needs to outlive a master key rotation, such as the key
of the keyed hashes of tokens (API keys, refresh tokens, client secrets): derived from the
master key it would change with it, and every stored hash would stop matching.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow


class PlatformKey(Base):
    """A named platform-wide key, sealed (associated data ``keel-key:<name>``)."""

    __tablename__ = "keel_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

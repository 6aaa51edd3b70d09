"""Identifiers: time-ordered UUIDv7 strings, so primary keys index and paginate in order."""

from __future__ import annotations

import uuid_utils


def new_id() -> str:
    """A new UUIDv7 (RFC 9562) as its canonical 36-character string."""
    return str(uuid_utils.uuid7())

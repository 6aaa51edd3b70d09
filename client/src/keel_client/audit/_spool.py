"""``AuditSpool``: the audit client's local write-ahead journal, and its errors.

``AuditClient.record()`` appends an event's line here and returns; the sender peeks the
oldest lines, sends them, and acknowledges what Keel stored. The journal itself (files,
lock, recovery after a crash) is ``keel_client._journal.Journal``, shared with the jobs
client's enqueue spool.
"""

from __future__ import annotations

import logging
import os

from keel_client._journal import (
    ACK_FILE,
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_SEGMENT_BYTES,
    LOCK_FILE,
    Journal,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
)

__all__ = [
    "ACK_FILE",
    "DEFAULT_MAX_SPOOL_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "LOCK_FILE",
    "AuditSpool",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
]

logger = logging.getLogger("keel_client.audit")


class AuditSpool(Journal):
    """A durable FIFO of event lines: an append-only journal plus an acknowledged mark
    (see :class:`~keel_client._journal.Journal`), named "audit spool" in its errors.

    Example::

        with AuditSpool("/var/spool/myapp-audit") as spool:
            spool.append(encode_event(build_event("app.session.login")))
            lines = spool.peek(100)
            ...  # send them
            spool.acknowledge(len(lines))
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = False,
    ) -> None:
        super().__init__(
            directory,
            name="audit spool",
            service="the audit service",
            logger=logger,
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
            fsync=fsync,
        )

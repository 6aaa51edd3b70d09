"""The jobs engine's logic, one module per concept. Plain arguments in, plain objects out;
functions take the caller's session and never commit.

- :mod:`.enqueue`: one job or a batch; unique keys;
- :mod:`.claims`: claim (leases), heartbeat, complete, fail, and the rescue of lapsed leases;
- :mod:`.retry`: the backoff policy (pure);
- :mod:`.admin`: read, cancel, requeue the dead.
"""

from __future__ import annotations

from keel.jobs.service.admin import cancel, get_job, requeue_dead
from keel.jobs.service.claims import (
    Claim,
    HeartbeatResult,
    claim,
    complete,
    fail,
    heartbeat,
    rescue_lapsed,
)
from keel.jobs.service.enqueue import NewJob, enqueue, enqueue_many
from keel.jobs.service.retry import MAX_BACKOFF_SECONDS, backoff_seconds

__all__ = [
    "MAX_BACKOFF_SECONDS",
    "Claim",
    "HeartbeatResult",
    "NewJob",
    "backoff_seconds",
    "cancel",
    "claim",
    "complete",
    "enqueue",
    "enqueue_many",
    "fail",
    "get_job",
    "heartbeat",
    "requeue_dead",
    "rescue_lapsed",
]

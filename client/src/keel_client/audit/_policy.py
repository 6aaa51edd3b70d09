"""What the audit sender does after a batch failed: pure decisions, tested on their own.

Refused for good (400/409/413/422): one event alone is reported and dropped, a batch is sent
again one event at a time to find it. Anything else (5xx, 429, 401/403, timeouts, connection
errors): keep the events and send them again after a full-jitter backoff.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel_client.http import backoff

__all__ = ["REJECTION_STATUSES", "FailureStep", "RejectedEvent", "failure_step", "retry_delay"]


class FailureStep(enum.StrEnum):
    """What the sender does after a batch failed."""

    #: Keep the events, back off, send them again: Keel is unreachable or unwilling now.
    RETRY = "retry"
    #: Send the batch's events one at a time to find the ones Keel refuses.
    ISOLATE = "isolate"
    #: Report and drop this one event: Keel refused it and always will.
    REJECT = "reject"


#: Answers that refuse the events themselves (malformed, unregistered action, id reused with
#: other content, too large): sending them again cannot succeed. Every other failure,
#: 401/403/404 included, is a deployment problem that a fix on Keel's side ends, so the
#: events wait for it.
REJECTION_STATUSES = frozenset({400, 409, 413, 422})


def failure_step(status: int | None, batch_size: int) -> FailureStep:
    """The next step after a batch of ``batch_size`` events failed with ``status`` (``None``:
    no answer at all)."""
    if status not in REJECTION_STATUSES:
        return FailureStep.RETRY
    return FailureStep.ISOLATE if batch_size > 1 else FailureStep.REJECT


def retry_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    random: Callable[[], float] = _random.random,
) -> float:
    """Seconds before sending again after ``failures`` failures in a row (at least 1).

    Full-jitter backoff, so the clients of a fleet that lost Keel together come back spread
    out; never sooner than the ``Retry-After`` Keel or the circuit breaker asked for (capped).
    """
    delay = backoff(max(failures - 1, 0), base=base, cap=cap, random=random)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event Keel refused for good; handed to ``on_rejected`` and then dropped.

    ``event`` is the event as recorded (for a dead-letter store of the application's own);
    the rest says why. Logs carry only the id, action, status and code.
    """

    event: dict[str, Any]
    status: int | None
    code: str
    detail: str | None
    request_id: str | None

    @property
    def id(self) -> str | None:
        value = self.event.get("id")
        return value if isinstance(value, str) else None

    @property
    def action(self) -> str | None:
        value = self.event.get("action")
        return value if isinstance(value, str) else None

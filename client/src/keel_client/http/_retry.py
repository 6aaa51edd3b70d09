"""Retry policy as small pure functions (the I/O lives in ``_client.py``).

``should_retry`` answers "may this failure be tried again?"; ``sleep_time`` answers "how long to
wait first, and is there still time?". Both take plain values so tests call them directly.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "FailureKind",
    "RetryPolicy",
    "backoff",
    "parse_retry_after",
    "should_retry",
    "sleep_time",
]

#: RFC 9110 section 9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that mean "not processed, try later": rate limited, bad gateway, unavailable,
#: gateway timeout. A 500 is not here: the upstream may have done part of the work.
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class FailureKind(enum.StrEnum):
    """Why an attempt produced no response.

    Example::

        should_retry(policy, method="GET", retries_done=0, failure=FailureKind.CONNECT)
    """

    #: The connection could not be opened; nothing reached the upstream.
    CONNECT = "connect"
    #: The connection broke (reset, closed early, protocol error) after it was opened.
    CONNECTION = "connection"
    #: A connect/read/write/pool timeout or the call's deadline.
    TIMEOUT = "timeout"
    #: Anything else (a redirect loop, an unsupported scheme): not worth repeating.
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a client retries failed attempts.

    Defaults: two retries (three attempts), full-jitter exponential backoff from 0.25 s capped
    at 10 s, on connection errors, timeouts and 429/502/503/504, for idempotent methods or calls
    sent with an ``Idempotency-Key``. A ``Retry-After`` longer than ``max_retry_after`` ends
    the call instead of parking it.

    Example::

        api = BillingAPI(retry=RetryPolicy(max_retries=4, backoff_base=0.1))
    """

    max_retries: int = 2
    backoff_base: float = 0.25
    backoff_max: float = 10.0
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)
    retry_on_connection_errors: bool = True
    retry_on_timeouts: bool = True
    max_retry_after: float = 60.0


def should_retry(
    policy: RetryPolicy,
    *,
    method: str,
    retries_done: int,
    status: int | None = None,
    failure: FailureKind | None = None,
    has_idempotency_key: bool = False,
) -> bool:
    """Whether an attempt that ended with ``status`` or ``failure`` may be sent again.

    A non-idempotent method (POST, PATCH) is retried only when the call carries an
    ``Idempotency-Key``: without one a retry could charge a card twice.
    """
    if retries_done >= policy.max_retries:
        return False
    if method.upper() not in IDEMPOTENT_METHODS and not has_idempotency_key:
        return False
    if status is not None:
        return status in policy.retry_statuses
    if failure in (FailureKind.CONNECT, FailureKind.CONNECTION):
        return policy.retry_on_connection_errors
    if failure is FailureKind.TIMEOUT:
        return policy.retry_on_timeouts
    return False


def backoff(
    retries_done: int,
    *,
    base: float,
    cap: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**retries_done))``.

    Full jitter spreads a crowd of clients that failed together over the whole interval, which
    empties the upstream's queue fastest (AWS Architecture Blog, "Exponential Backoff And
    Jitter").
    """
    ceiling = min(cap, base * 2.0 ** min(retries_done, 62))
    return ceiling * random()


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    ``now`` is the current Unix time. A date in the past means "now" (0.0); a value that is
    neither form is ignored (``None``), as RFC 9110 section 10.2.3 leaves no other reading.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        # RFC 9110 dates are always GMT; email.utils returns naive for "-0000".
        return None
    return max(0.0, moment.timestamp() - now)


def sleep_time(
    policy: RetryPolicy,
    *,
    retries_done: int,
    retry_after: float | None = None,
    remaining: float | None = None,
    random: Callable[[], float] = _random.random,
) -> float | None:
    """How long to sleep before the next attempt, or ``None`` when no retry can happen.

    - ``Retry-After`` wins over backoff when present; one longer than ``max_retry_after`` or
      than the time left before the deadline ends the call: coming back early would break the
      upstream's request, and waiting past the deadline is pointless.
    - Otherwise the jittered backoff is used; when it would reach the deadline the call stops
      at once rather than sleeping into it, so no retry ever starts after the deadline.
    """
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return None
        delay = retry_after
    else:
        delay = backoff(
            retries_done, base=policy.backoff_base, cap=policy.backoff_max, random=random
        )
    if remaining is not None and delay >= remaining:
        return None
    return delay

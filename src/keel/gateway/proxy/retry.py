"""When the proxy may send a request again: the pure decision and the per-pool budget.

A retry is allowed when every one of these holds (:func:`may_retry`):

- the failure is one the route's :class:`RetryPolicy` lists (``connect_error``, ``timeout``,
  ``502``/``503``/``504``) and attempts are left;
- the method is idempotent (RFC 9110 §9.2.2): sending a POST twice could act twice;
- the request body can be sent again: there is none, or it was buffered whole (≤ 64 KiB), or
  not a byte of it has been read from the client yet;
- the pool's :class:`RetryBudget` has room: over the last 10 s, retries stay under
  ``budget_ratio * requests + min_per_second * 10`` (Linkerd's budget). When every target
  fails, a fixed number of attempts per request would multiply the load on a struggling
  upstream; the budget caps the extra load at a fraction of the real traffic.
"""

from __future__ import annotations

from typing import Final

from keel_client.edge._upstreams import IDEMPOTENT_METHODS, RetryCondition, RetryPolicy

from .health import SlidingCounter

#: The window the retry budget is measured over.
BUDGET_WINDOW_SECONDS: Final = 10.0


class RetryBudget:
    """Requests and retries of one pool over the last :data:`BUDGET_WINDOW_SECONDS`."""

    __slots__ = ("_counter",)

    def __init__(self) -> None:
        # total = requests (first attempts), marked = retries
        self._counter = SlidingCounter(BUDGET_WINDOW_SECONDS)

    def record_request(self, now: float) -> None:
        self._counter.add(now)

    def try_spend(self, policy: RetryPolicy, now: float) -> bool:
        """Take one retry from the budget if it has room."""
        requests, retries = self._counter.counts(now)
        allowance = policy.budget_ratio * requests + policy.min_per_second * BUDGET_WINDOW_SECONDS
        if retries + 1 > allowance:
            return False
        self._counter.add(now, total=0, marked=1)
        return True


def may_retry(
    policy: RetryPolicy,
    *,
    condition: RetryCondition,
    method: str,
    attempts_made: int,
    is_body_replayable: bool,
) -> bool:
    """Whether a failed attempt may be tried again (the budget aside)."""
    return (
        attempts_made <= policy.attempts
        and condition in policy.on
        and method in IDEMPOTENT_METHODS
        and is_body_replayable
    )

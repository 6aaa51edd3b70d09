"""A retry budget: retries may be at most a fraction of recent requests.

Modelled on Finagle's ``RetryBudget`` and gRPC's retry throttling. Per-call retry limits alone
multiply load during an outage (three attempts per call triple it, exactly when the upstream
is weakest); a budget shared by all calls of a client keeps retries to, say, 20 % extra.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryBudget", "RetryBudgetSnapshot"]

_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class RetryBudgetSnapshot:
    """Requests and retries in the current window, and how many more retries it allows.

    Example::

        if api.health().retry_budget.available == 0:
            log.warning("retry budget spent: upstream outage?")
    """

    requests: int
    retries: int
    available: int


class RetryBudget:
    """Allows ``retries <= ratio * requests + min_retries_per_second * window`` in a window.

    The window slides in ten buckets, so old traffic ages out smoothly. The minimum keeps a
    quiet client able to retry the odd failure. Thread-safe: one budget serves every call of a
    client, sync or async.

    Example::

        budget = RetryBudget(ratio=0.1, min_retries_per_second=1.0, window=10.0)
        api = BillingAPI(retry_budget=budget)
        api.health().retry_budget.available
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_second: float = 1.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0 or window <= 0:
            raise ValueError("ratio and min_retries_per_second must be >= 0, window > 0")
        self.ratio = ratio
        self.min_retries_per_second = min_retries_per_second
        self.window = window
        self._clock = clock
        self._bucket_width = window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._current = self._bucket_index()
        self._lock = threading.Lock()

    def _bucket_index(self) -> int:
        return math.floor(self._clock() / self._bucket_width)

    def _advance(self) -> None:
        # Zero every bucket the clock has moved past since the last call.
        index = self._bucket_index()
        steps = min(index - self._current, _BUCKETS)
        for offset in range(1, steps + 1):
            slot = (self._current + offset) % _BUCKETS
            self._requests[slot] = 0
            self._retries[slot] = 0
        if steps > 0:
            self._current = index

    def _available(self) -> int:
        allowed = self.ratio * sum(self._requests) + self.min_retries_per_second * self.window
        return max(0, math.floor(allowed) - sum(self._retries))

    def record_request(self) -> None:
        """Count one call (not one attempt): each call earns ``ratio`` of a retry."""
        with self._lock:
            self._advance()
            self._requests[self._current % _BUCKETS] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        with self._lock:
            self._advance()
            if self._available() <= 0:
                return False
            self._retries[self._current % _BUCKETS] += 1
            return True

    def snapshot(self) -> RetryBudgetSnapshot:
        with self._lock:
            self._advance()
            return RetryBudgetSnapshot(
                requests=sum(self._requests),
                retries=sum(self._retries),
                available=self._available(),
            )

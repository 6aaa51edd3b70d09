"""Whether a target may take requests: passive ejection, active checks, circuit breaker.

Three independent judges, each pure state driven by outcomes and a ``now`` (monotonic
seconds) so tests need no sleeping:

- :class:`PassiveHealth` counts consecutive failed requests (connect error, timeout, a
  502/503/504 from the target) and ejects the target for ``ejection_seconds`` at the
  threshold; one success resets the count.
- :class:`ActiveHealth` holds the verdict of the background probes (:func:`run_active_checks`):
  ``unhealthy_threshold`` failed probes in a row take the target out, ``healthy_threshold``
  passing ones in a row bring it back. Targets start healthy, as in nginx: a pool answers at
  once after a restart instead of waiting for the first probes.
- :class:`CircuitBreaker` opens when the failure ratio over a sliding window crosses the
  policy's threshold (with at least ``minimum_requests``), stays open ``open_seconds``, then
  lets exactly one probe request through (half-open): its success closes the breaker, its
  failure opens it again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from enum import Enum
from typing import Final

from keel.core.logging import get_logger
from keel_client.edge._upstreams import (
    ActiveHealthCheck,
    CircuitBreakerPolicy,
    PassiveHealthCheck,
)

from .client import Origin, UpstreamError, probe

log = get_logger("keel.gateway.proxy")

#: A sliding window is kept as this many buckets (a ring of counters, O(1) per request).
WINDOW_BUCKETS: Final = 10


class SlidingCounter:
    """Counts of two kinds of events (``total`` and ``marked``) over the last ``window``
    seconds, in :data:`WINDOW_BUCKETS` buckets."""

    __slots__ = ("_bucket_seconds", "_marked", "_slot", "_totals")

    def __init__(self, window_seconds: float) -> None:
        self._bucket_seconds = window_seconds / WINDOW_BUCKETS
        self._totals = [0] * WINDOW_BUCKETS
        self._marked = [0] * WINDOW_BUCKETS
        self._slot = 0  # absolute bucket number of the newest bucket

    def add(self, now: float, *, total: int = 1, marked: int = 0) -> None:
        index = self._advance(now)
        self._totals[index] += total
        self._marked[index] += marked

    def counts(self, now: float) -> tuple[int, int]:
        self._advance(now)
        return sum(self._totals), sum(self._marked)

    def clear(self) -> None:
        self._totals = [0] * WINDOW_BUCKETS
        self._marked = [0] * WINDOW_BUCKETS

    def _advance(self, now: float) -> int:
        slot = int(now / self._bucket_seconds)
        if slot != self._slot:
            # Zero the buckets that fell out of the window since the last event.
            for stale in range(max(self._slot + 1, slot - WINDOW_BUCKETS + 1), slot + 1):
                self._totals[stale % WINDOW_BUCKETS] = 0
                self._marked[stale % WINDOW_BUCKETS] = 0
            self._slot = slot
        return slot % WINDOW_BUCKETS


class PassiveHealth:
    __slots__ = ("_failures", "ejected_until", "policy")

    def __init__(self, policy: PassiveHealthCheck) -> None:
        self.policy = policy
        self._failures = 0
        self.ejected_until = 0.0

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def record(self, *, is_failure: bool, now: float) -> bool:
        """Count one outcome; ``True`` when this failure ejected the target."""
        if not is_failure:
            self._failures = 0
            return False
        self._failures += 1
        if self._failures >= self.policy.consecutive_failures and not self.is_ejected(now):
            self._failures = 0
            self.ejected_until = now + self.policy.ejection_seconds
            return True
        return False


class ActiveHealth:
    __slots__ = ("_streak", "is_healthy", "policy")

    def __init__(self, policy: ActiveHealthCheck) -> None:
        self.policy = policy
        self.is_healthy = True
        self._streak = 0  # consecutive probes contradicting the current verdict

    def record_probe(self, *, passed: bool) -> bool:
        """Count one probe; ``True`` when the verdict changed."""
        if passed == self.is_healthy:
            self._streak = 0
            return False
        self._streak += 1
        threshold = self.policy.healthy_threshold if passed else self.policy.unhealthy_threshold
        if self._streak >= threshold:
            self.is_healthy = passed
            self._streak = 0
            return True
        return False


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("_opened_at", "_window", "is_probe_in_flight", "policy", "state")

    def __init__(self, policy: CircuitBreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self._window = SlidingCounter(policy.window_seconds)
        self._opened_at = 0.0
        self.is_probe_in_flight = False

    def allows(self, now: float) -> bool:
        """Whether a request may be sent (without reserving the half-open probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self._opened_at < self.policy.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
        return not self.is_probe_in_flight

    def on_send(self, now: float) -> None:
        """A request is going to the target: in half-open state, it is the probe."""
        if self.state is not BreakerState.CLOSED and self.allows(now):
            self.is_probe_in_flight = True

    def record(self, *, is_failure: bool, now: float) -> BreakerState | None:
        """Count one outcome; the new state when it changed."""
        if self.state is BreakerState.HALF_OPEN and self.is_probe_in_flight:
            self.is_probe_in_flight = False
            if is_failure:
                return self._open(now)
            self.state = BreakerState.CLOSED
            self._window.clear()
            return BreakerState.CLOSED
        if self.state is not BreakerState.CLOSED:
            return None  # an answer to a request sent before the breaker opened
        self._window.add(now, marked=int(is_failure))
        total, failures = self._window.counts(now)
        if (
            is_failure
            and total >= self.policy.minimum_requests
            and failures >= self.policy.failure_ratio * total
        ):
            return self._open(now)
        return None

    def _open(self, now: float) -> BreakerState:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._window.clear()
        return BreakerState.OPEN


async def run_active_checks(
    origin: Origin,
    health: ActiveHealth,
    *,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe ``origin`` every ``interval_seconds`` until cancelled, updating ``health``."""
    policy = health.policy
    while True:
        started = clock()
        try:
            status = await probe(origin, policy.path, policy.timeout_seconds, ssl_context)
            passed = policy.is_healthy_status(status)
        except UpstreamError:
            passed = False
        if health.record_probe(passed=passed):
            log.warning(
                "gateway.target_health",
                target=origin.url,
                healthy=health.is_healthy,
            )
        await asyncio.sleep(max(0.0, policy.interval_seconds - (clock() - started)))

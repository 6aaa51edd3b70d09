"""A circuit breaker per upstream host.

closed ──(failure rate ≥ threshold over ≥ minimum_calls of the last window_size)──▶ open
open ──(cooldown elapsed)──▶ half-open: up to ``half_open_max_calls`` probes go through
half-open ──(every probe succeeded)──▶ closed      half-open ──(a probe failed)──▶ open

While open, calls fail fast with ``CircuitOpenError`` instead of queueing on a dead upstream.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["BreakerPolicy", "CircuitBreaker", "CircuitBreakers", "CircuitSnapshot", "CircuitState"]


class CircuitState(enum.StrEnum):
    """A breaker's state.

    Example::

        if api.health().circuits["billing.internal:443"].state is CircuitState.OPEN: ...
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge_value(self) -> int:
        """0 closed, 1 half-open, 2 open: larger is worse, so alerts can use ``> 0``."""
        return _GAUGE_VALUES[self]


_GAUGE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a host's circuit opens and how it recovers.

    Defaults: opens when at least half of the last 20 attempts failed (once 10 were seen),
    stays open 10 s, then lets one probe through. Failures are connection errors, timeouts and
    the ``failure_statuses``; a 4xx is the caller's problem, not the upstream's.

    Example::

        api = BillingAPI(breaker=BreakerPolicy(failure_rate_threshold=0.3, cooldown=30.0))
    """

    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window_size: int = 20
    cooldown: float = 10.0
    half_open_max_calls: int = 1
    failure_statuses: frozenset[int] = field(default=frozenset({500, 502, 503, 504}))


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    """A host's breaker as ``client.health()`` reports it.

    Example::

        snapshot = api.health().circuits["billing.internal:443"]
        print(snapshot.state, f"{snapshot.failure_rate:.0%}", snapshot.retry_after)
    """

    state: CircuitState
    calls: int
    failures: int
    failure_rate: float
    retry_after: float


class CircuitBreaker:
    """One host's breaker. Thread-safe; every method is cheap (no I/O, one lock).

    Example::

        breaker = CircuitBreaker(BreakerPolicy(minimum_calls=5))
        if breaker.try_acquire():
            ... send, then breaker.record(failed=...)
    """

    def __init__(
        self, policy: BreakerPolicy, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._outcomes: deque[bool] = deque(maxlen=policy.window_size)
        self._failures = 0
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0

    @property
    def state(self) -> CircuitState:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> CircuitState:
        # Open turns half-open lazily, when someone looks after the cooldown.
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.policy.cooldown
        ):
            self._state = CircuitState.HALF_OPEN
            self._probes_in_flight = 0
            self._probe_successes = 0
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        with self._lock:
            if self._current_state() is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self.policy.cooldown - (self._clock() - self._opened_at))

    def try_acquire(self) -> bool:
        """Whether an attempt may go out now. In half-open, this takes a probe slot."""
        with self._lock:
            state = self._current_state()
            if state is CircuitState.CLOSED:
                return True
            if state is CircuitState.OPEN:
                return False
            if self._probes_in_flight >= self.policy.half_open_max_calls:
                return False
            self._probes_in_flight += 1
            return True

    def record(self, *, failed: bool) -> None:
        """The outcome of an attempt that ``try_acquire`` let through."""
        with self._lock:
            state = self._current_state()
            if state is CircuitState.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
                if failed:
                    self._open()
                    return
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_max_calls:
                    self._close()
                return
            if state is CircuitState.OPEN:
                # A straggler that started before the circuit opened: it changes nothing.
                return
            if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
                self._failures -= 1
            self._outcomes.append(failed)
            if failed:
                self._failures += 1
            calls = len(self._outcomes)
            if (
                calls >= self.policy.minimum_calls
                and self._failures / calls >= self.policy.failure_rate_threshold
            ):
                self._open()

    def release(self) -> None:
        """Give back a probe slot whose attempt was cancelled before it had an outcome."""
        with self._lock:
            if self._state is CircuitState.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def snapshot(self) -> CircuitSnapshot:
        with self._lock:
            state = self._current_state()
            calls = len(self._outcomes)
            remaining = 0.0
            if state is CircuitState.OPEN:
                remaining = max(0.0, self.policy.cooldown - (self._clock() - self._opened_at))
            return CircuitSnapshot(
                state=state,
                calls=calls,
                failures=self._failures,
                failure_rate=self._failures / calls if calls else 0.0,
                retry_after=remaining,
            )

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._probes_in_flight = 0
        self._probe_successes = 0

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._outcomes.clear()
        self._failures = 0


class CircuitBreakers:
    """The breakers of one client, one per upstream ``host:port``, created on first use.

    Example::

        breakers = CircuitBreakers(BreakerPolicy())
        breakers.get("billing.internal:443").state
    """

    def __init__(
        self, policy: BreakerPolicy, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, host: str) -> CircuitBreaker:
        breaker = self._breakers.get(host)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(
                    host, CircuitBreaker(self.policy, clock=self._clock)
                )
        return breaker

    def snapshots(self) -> dict[str, CircuitSnapshot]:
        return {host: breaker.snapshot() for host, breaker in list(self._breakers.items())}

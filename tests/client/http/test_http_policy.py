"""The pure policy functions: retry decisions, backoff, Retry-After, budget, breaker, options."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from keel_client.http import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitState,
    FailureKind,
    RetryBudget,
    RetryPolicy,
    backoff,
    parse_retry_after,
    should_retry,
    sleep_time,
)
from keel_client.http._options import resolve_options

POLICY = RetryPolicy(max_retries=3, backoff_base=0.5, backoff_max=4.0)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestShouldRetry:
    @pytest.mark.parametrize("status", [429, 502, 503, 504])
    def test_retries_idempotent_get_on_retryable_status(self, status: int) -> None:
        assert should_retry(POLICY, method="GET", retries_done=0, status=status)

    @pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 500, 501])
    def test_does_not_retry_other_statuses(self, status: int) -> None:
        assert not should_retry(POLICY, method="GET", retries_done=0, status=status)

    @pytest.mark.parametrize("method", ["POST", "PATCH"])
    def test_never_retries_unsafe_method_without_idempotency_key(self, method: str) -> None:
        assert not should_retry(POLICY, method=method, retries_done=0, status=503)
        assert not should_retry(POLICY, method=method, retries_done=0, failure=FailureKind.CONNECT)

    def test_retries_post_with_idempotency_key(self) -> None:
        assert should_retry(
            POLICY, method="POST", retries_done=0, status=503, has_idempotency_key=True
        )

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD", "OPTIONS"])
    def test_idempotent_methods_retry_without_key(self, method: str) -> None:
        assert should_retry(POLICY, method=method, retries_done=1, status=502)

    def test_stops_when_retries_are_used_up(self) -> None:
        assert should_retry(POLICY, method="GET", retries_done=2, status=503)
        assert not should_retry(POLICY, method="GET", retries_done=3, status=503)

    def test_connection_errors_and_timeouts_are_retryable_by_default(self) -> None:
        for failure in (FailureKind.CONNECT, FailureKind.CONNECTION, FailureKind.TIMEOUT):
            assert should_retry(POLICY, method="GET", retries_done=0, failure=failure)
        assert not should_retry(POLICY, method="GET", retries_done=0, failure=FailureKind.OTHER)

    def test_timeouts_and_connection_errors_can_be_switched_off(self) -> None:
        policy = RetryPolicy(retry_on_timeouts=False, retry_on_connection_errors=False)
        assert not should_retry(policy, method="GET", retries_done=0, failure=FailureKind.TIMEOUT)
        assert not should_retry(policy, method="GET", retries_done=0, failure=FailureKind.CONNECT)

    def test_retry_statuses_are_configurable(self) -> None:
        policy = RetryPolicy(retry_statuses=frozenset({500}))
        assert should_retry(policy, method="GET", retries_done=0, status=500)
        assert not should_retry(policy, method="GET", retries_done=0, status=503)


class TestBackoff:
    def test_grows_exponentially_up_to_the_cap(self) -> None:
        ceilings = [backoff(n, base=0.5, cap=4.0, random=lambda: 1.0) for n in range(6)]
        assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    def test_full_jitter_spans_zero_to_the_ceiling(self) -> None:
        assert backoff(3, base=0.5, cap=4.0, random=lambda: 0.0) == 0.0
        assert backoff(3, base=0.5, cap=4.0, random=lambda: 0.25) == 1.0

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        assert backoff(10_000, base=0.5, cap=4.0, random=lambda: 1.0) == 4.0


class TestParseRetryAfter:
    def test_delay_seconds(self) -> None:
        assert parse_retry_after("7", now=0.0) == 7.0

    def test_http_date(self) -> None:
        now = 1_700_000_000.0
        value = email.utils.formatdate(now + 30, usegmt=True)
        assert parse_retry_after(value, now=now) == pytest.approx(30.0, abs=1.0)

    def test_date_in_the_past_means_now(self) -> None:
        value = email.utils.formatdate(1_000_000.0, usegmt=True)
        assert parse_retry_after(value, now=2_000_000.0) == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Tue, 99 Foo 2024"])
    def test_ignores_anything_else(self, value: str | None) -> None:
        assert parse_retry_after(value, now=0.0) is None


class TestSleepTime:
    def test_uses_backoff_without_retry_after(self) -> None:
        delay = sleep_time(POLICY, retries_done=2, remaining=None, random=lambda: 0.5)
        assert delay == 1.0

    def test_retry_after_wins_over_backoff(self) -> None:
        assert sleep_time(POLICY, retries_done=0, retry_after=3.0, random=lambda: 1.0) == 3.0

    def test_retry_after_beyond_the_maximum_ends_the_call(self) -> None:
        policy = RetryPolicy(max_retry_after=5.0)
        assert sleep_time(policy, retries_done=0, retry_after=6.0) is None

    def test_retry_after_beyond_the_deadline_ends_the_call(self) -> None:
        assert sleep_time(POLICY, retries_done=0, retry_after=2.0, remaining=1.0) is None

    def test_no_sleep_runs_into_the_deadline(self) -> None:
        delay = sleep_time(POLICY, retries_done=3, remaining=0.3, random=lambda: 1.0)
        assert delay is None

    def test_a_sleep_that_fits_before_the_deadline_is_kept(self) -> None:
        delay = sleep_time(POLICY, retries_done=0, remaining=10.0, random=lambda: 1.0)
        assert delay == 0.5


class TestRetryBudget:
    def test_allows_a_fraction_of_requests(self) -> None:
        clock = FakeClock()
        budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0, window=10.0, clock=clock)
        for _ in range(100):
            budget.record_request()
        granted = sum(budget.try_spend() for _ in range(50))
        assert granted == 10
        assert budget.snapshot().available == 0

    def test_minimum_lets_a_quiet_client_retry(self) -> None:
        budget = RetryBudget(ratio=0.0, min_retries_per_second=0.5, window=10.0, clock=FakeClock())
        assert sum(budget.try_spend() for _ in range(20)) == 5

    def test_window_slides_and_forgets_old_traffic(self) -> None:
        clock = FakeClock()
        budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0, clock=clock)
        for _ in range(10):
            budget.record_request()
        assert sum(budget.try_spend() for _ in range(10)) == 5
        clock.now += 11.0
        assert budget.snapshot().requests == 0
        assert budget.snapshot().retries == 0
        assert not budget.try_spend()

    def test_rejects_nonsense_settings(self) -> None:
        with pytest.raises(ValueError, match="window"):
            RetryBudget(window=0)


class TestCircuitBreaker:
    def make(self, clock: FakeClock, **overrides: float) -> CircuitBreaker:
        policy = BreakerPolicy(
            **{"minimum_calls": 4, "window_size": 10, "cooldown": 5.0, **overrides}  # type: ignore[arg-type]
        )
        return CircuitBreaker(policy, clock=clock)

    def test_stays_closed_below_the_minimum_number_of_calls(self) -> None:
        breaker = self.make(FakeClock())
        for _ in range(3):
            assert breaker.try_acquire()
            breaker.record(failed=True)
        assert breaker.state is CircuitState.CLOSED

    def test_opens_at_the_failure_rate_threshold(self) -> None:
        breaker = self.make(FakeClock())
        for failed in (False, True, False, True):
            breaker.record(failed=failed)
        assert breaker.state is CircuitState.OPEN
        assert not breaker.try_acquire()

    def test_stays_closed_below_the_failure_rate(self) -> None:
        breaker = self.make(FakeClock())
        for failed in (False, False, False, True, False, True, False):
            breaker.record(failed=failed)
        assert breaker.state is CircuitState.CLOSED

    def test_half_open_after_cooldown_admits_one_probe_then_closes(self) -> None:
        clock = FakeClock()
        breaker = self.make(clock)
        for _ in range(4):
            breaker.record(failed=True)
        assert breaker.retry_after() == 5.0
        clock.now += 5.0
        assert breaker.state is CircuitState.HALF_OPEN
        assert breaker.try_acquire()
        assert not breaker.try_acquire()
        breaker.record(failed=False)
        assert breaker.state is CircuitState.CLOSED
        assert breaker.snapshot().calls == 0

    def test_failed_probe_opens_again_for_a_full_cooldown(self) -> None:
        clock = FakeClock()
        breaker = self.make(clock)
        for _ in range(4):
            breaker.record(failed=True)
        clock.now += 5.0
        assert breaker.try_acquire()
        breaker.record(failed=True)
        assert breaker.state is CircuitState.OPEN
        clock.now += 4.9
        assert breaker.state is CircuitState.OPEN

    def test_cancelled_probe_gives_its_slot_back(self) -> None:
        clock = FakeClock()
        breaker = self.make(clock)
        for _ in range(4):
            breaker.record(failed=True)
        clock.now += 5.0
        assert breaker.try_acquire()
        breaker.release()
        assert breaker.try_acquire()

    def test_old_outcomes_leave_the_window(self) -> None:
        breaker = self.make(FakeClock(), minimum_calls=4, window_size=4)
        for failed in (True, False, False, False, False):
            breaker.record(failed=failed)
        assert breaker.snapshot().failures == 0


class TestResolveOptions:
    def test_call_options_override_client_defaults(self) -> None:
        resolved = resolve_options(
            {"timeout": 2.0, "deadline": 9.0, "max_retries": 0},
            timeout=httpx.Timeout(30.0),
            deadline=60.0,
            max_retries=2,
        )
        assert resolved.timeout == httpx.Timeout(2.0)
        assert (resolved.deadline, resolved.max_retries) == (9.0, 0)
        assert resolved.idempotency_key is None

    def test_idempotent_generates_a_key_and_an_explicit_key_wins(self) -> None:
        defaults = {"timeout": httpx.Timeout(1.0), "deadline": None, "max_retries": 1}
        generated = resolve_options({"idempotent": True}, **defaults)  # type: ignore[arg-type]
        explicit = resolve_options({"idempotency_key": "order-7"}, **defaults)  # type: ignore[arg-type]
        assert generated.idempotency_key is not None
        assert len(generated.idempotency_key) == 36
        assert explicit.idempotency_key == "order-7"

"""Passive ejection, active verdicts, the circuit breaker and the retry rules, as pure state
driven by outcomes and a clock."""

from __future__ import annotations

from keel.gateway.proxy.health import (
    ActiveHealth,
    BreakerState,
    CircuitBreaker,
    PassiveHealth,
    SlidingCounter,
)
from keel.gateway.proxy.retry import RetryBudget, may_retry
from keel_client.edge._upstreams import (
    ActiveHealthCheck,
    CircuitBreakerPolicy,
    PassiveHealthCheck,
    RetryPolicy,
)


def test_passive_ejects_after_consecutive_failures_for_its_time() -> None:
    health = PassiveHealth(PassiveHealthCheck(consecutive_failures=3, ejection_seconds=10))
    assert not health.record(is_failure=True, now=0)
    assert not health.record(is_failure=True, now=1)
    assert health.record(is_failure=True, now=2)
    assert health.is_ejected(11.9)
    assert not health.is_ejected(12.0)


def test_passive_success_resets_the_count() -> None:
    health = PassiveHealth(PassiveHealthCheck(consecutive_failures=2))
    health.record(is_failure=True, now=0)
    health.record(is_failure=False, now=0)
    assert not health.record(is_failure=True, now=0)
    assert not health.is_ejected(0)


def test_active_verdict_changes_only_after_its_thresholds() -> None:
    health = ActiveHealth(ActiveHealthCheck(healthy_threshold=2, unhealthy_threshold=3))
    assert health.is_healthy
    assert not health.record_probe(passed=False)
    assert not health.record_probe(passed=False)
    assert health.record_probe(passed=False)
    assert not health.is_healthy
    assert not health.record_probe(passed=True)
    assert health.record_probe(passed=True)
    assert health.is_healthy


def test_active_expected_status_default_is_2xx_and_3xx() -> None:
    assert ActiveHealthCheck().is_healthy_status(204)
    assert ActiveHealthCheck().is_healthy_status(302)
    assert not ActiveHealthCheck().is_healthy_status(500)
    assert not ActiveHealthCheck(expected_status=[200]).is_healthy_status(204)


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(
        CircuitBreakerPolicy(
            failure_ratio=0.5, minimum_requests=4, window_seconds=10, open_seconds=5
        )
    )


def test_breaker_opens_at_the_failure_ratio_once_enough_requests() -> None:
    breaker = _breaker()
    assert breaker.record(is_failure=True, now=0) is None  # 1 of 1, under the minimum
    assert breaker.record(is_failure=False, now=0) is None
    assert breaker.record(is_failure=False, now=0) is None
    assert breaker.record(is_failure=True, now=0) is BreakerState.OPEN  # 2 of 4
    assert not breaker.allows(4.9)


def test_breaker_forgets_failures_outside_its_window() -> None:
    breaker = _breaker()
    for _ in range(3):
        breaker.record(is_failure=True, now=0)
    for _ in range(3):
        breaker.record(is_failure=False, now=11)
    assert breaker.record(is_failure=True, now=11) is None  # 1 of 4 in the window
    assert breaker.state is BreakerState.CLOSED


def test_half_open_breaker_lets_one_probe_and_closes_on_its_success() -> None:
    breaker = _breaker()
    for _ in range(4):
        breaker.record(is_failure=True, now=0)
    assert breaker.allows(5.0)
    breaker.on_send(5.0)
    assert not breaker.allows(5.1)  # the probe is in flight: nobody else
    assert breaker.record(is_failure=False, now=5.2) is BreakerState.CLOSED
    assert breaker.allows(5.3)


def test_half_open_breaker_reopens_when_the_probe_fails() -> None:
    breaker = _breaker()
    for _ in range(4):
        breaker.record(is_failure=True, now=0)
    breaker.allows(5.0)
    breaker.on_send(5.0)
    assert breaker.record(is_failure=True, now=5.5) is BreakerState.OPEN
    assert not breaker.allows(10.4)
    assert breaker.allows(10.5)


def test_sliding_counter_drops_old_buckets() -> None:
    counter = SlidingCounter(10)
    counter.add(0.5, marked=1)
    counter.add(9.5)
    assert counter.counts(9.9) == (2, 1)
    assert counter.counts(10.5) == (1, 0)
    assert counter.counts(100) == (0, 0)


def test_only_idempotent_methods_with_replayable_bodies_are_retried() -> None:
    policy = RetryPolicy(attempts=2)

    def check(**changes: object) -> bool:
        arguments: dict[str, object] = {
            "condition": "connect_error",
            "method": "GET",
            "attempts_made": 1,
            "is_body_replayable": True,
        }
        arguments.update(changes)
        return may_retry(policy, **arguments)  # type: ignore[arg-type]

    assert check()
    assert check(method="PUT", condition="503")
    assert not check(method="POST")
    assert not check(method="PATCH")
    assert not check(is_body_replayable=False)
    assert not check(condition="timeout")  # not in the default ``on``
    assert check(attempts_made=2)
    assert not check(attempts_made=3)  # 1 + 2 attempts made


def test_retry_budget_allows_a_fraction_of_requests() -> None:
    policy = RetryPolicy(budget_ratio=0.2, min_per_second=0)
    budget = RetryBudget()
    for _ in range(50):
        budget.record_request(now=1)
    spent = sum(budget.try_spend(policy, now=1) for _ in range(100))
    assert spent == 10
    assert not budget.try_spend(policy, now=12)  # the window moved on: no requests in it
    for _ in range(5):
        budget.record_request(now=12)
    assert budget.try_spend(policy, now=12)
    assert not budget.try_spend(policy, now=12)


def test_retry_budget_minimum_per_second_allows_retries_at_low_traffic() -> None:
    policy = RetryPolicy(budget_ratio=0.0, min_per_second=1)
    budget = RetryBudget()
    budget.record_request(now=0)
    assert sum(budget.try_spend(policy, now=0) for _ in range(50)) == 10

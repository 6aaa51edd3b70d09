"""The upstream wire models refuse bad values with an error whose location names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from keel_client.edge._upstreams import (
    ActiveHealthCheck,
    CircuitBreakerPolicy,
    PassiveHealthCheck,
    RetryPolicy,
    Timeouts,
    UpstreamPool,
    UpstreamTarget,
)


def _error_location(model: type[Any], **values: Any) -> tuple[str | int, ...]:
    with pytest.raises(ValidationError) as refused:
        model(**values)
    return refused.value.errors()[0]["loc"]


def test_a_pool_with_defaults() -> None:
    pool = UpstreamPool(name="orders", targets=[{"url": "https://orders.internal:8443/api"}])
    assert pool.balance == "round_robin"
    assert pool.targets[0].weight == 1
    assert pool.health is None
    assert pool.passive == PassiveHealthCheck()
    assert pool.breaker == CircuitBreakerPolicy()
    assert RetryPolicy().on == ["connect_error", "502", "503", "504"]
    assert Timeouts().read_seconds == 60


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.internal",
        "http://",
        "http://user:secret@api.internal",
        "http://api.internal/?debug=1",
        "http://api.internal/#top",
        "http://api internal",
        "http://api.internal:99999",
        "http://api.internal:0",
        "api.internal:8080",
    ],
)
def test_target_url_must_be_a_plain_http_origin(url: str) -> None:
    assert _error_location(UpstreamTarget, url=url) == ("url",)


def test_target_weight_bounds() -> None:
    assert _error_location(UpstreamTarget, url="http://a", weight=0) == ("weight",)
    assert _error_location(UpstreamTarget, url="http://a", weight=1001) == ("weight",)


def test_pool_refusals_name_the_field() -> None:
    target = {"url": "http://a"}
    assert _error_location(UpstreamPool, name="Orders", targets=[target]) == ("name",)
    assert _error_location(UpstreamPool, name="o", targets=[]) == ("targets",)
    twice = [{"url": "http://a:80/x"}, {"url": "http://a:80/x/"}]
    assert _error_location(UpstreamPool, name="o", targets=twice) == ("targets",)
    assert _error_location(UpstreamPool, name="o", targets=[target], balance="random") == (
        "balance",
    )
    assert _error_location(UpstreamPool, name="o", targets=[target], hash_on="header:") == (
        "hash_on",
    )
    # hash_on means something only to the consistent hash
    assert _error_location(UpstreamPool, name="o", targets=[target], hash_on="path") == ("hash_on",)
    assert _error_location(UpstreamPool, name="o", targets=[{"url": "http://a", "wieght": 2}]) == (
        "targets",
        0,
        "wieght",
    )
    hashed = UpstreamPool(
        name="o", targets=[target], balance="consistent_hash", hash_on="cookie:session"
    )
    assert hashed.hash_on == "cookie:session"


def test_health_breaker_timeout_and_retry_bounds() -> None:
    assert _error_location(ActiveHealthCheck, interval_seconds=0.01) == ("interval_seconds",)
    assert _error_location(ActiveHealthCheck, path="health") == ("path",)
    assert _error_location(ActiveHealthCheck, expected_status=[99]) == ("expected_status",)
    assert _error_location(PassiveHealthCheck, consecutive_failures=0) == ("consecutive_failures",)
    assert _error_location(CircuitBreakerPolicy, failure_ratio=1.5) == ("failure_ratio",)
    assert _error_location(Timeouts, connect_seconds=0) == ("connect_seconds",)
    assert _error_location(RetryPolicy, attempts=6) == ("attempts",)
    assert _error_location(RetryPolicy, on=["500"]) == ("on", 0)


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Timeouts().read_seconds = 1  # type: ignore[misc]

"""Fail-open and fail-closed bookkeeping: every outage counted, warned about at most once a
minute per dependency, use and outcome."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from keel.core import outages
from keel.core.outages import OutageCollector, Outcome, note_outage


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    monkeypatch.setattr(outages, "_counts", Counter())
    monkeypatch.setattr(outages, "_left_out", Counter())
    monkeypatch.setattr(outages, "_last_logged", {})


def warnings_of(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == "dependency.unavailable"]


def test_an_outage_under_load_is_warned_about_once_a_minute_and_counted_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(outages.time, "monotonic", lambda: now[0])
    error = ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 6379)")
    with capture_logs() as logs:
        for _ in range(500):
            note_outage("redis", "rate-limit:login", error, outcome=Outcome.fail_open)
        now[0] += outages.LOG_INTERVAL_SECONDS
        note_outage("redis", "rate-limit:login", error, outcome=Outcome.fail_open)
    warned = warnings_of(logs)
    assert [entry["left_out"] for entry in warned] == [0, 499]
    assert warned[0]["log_level"] == "warning"
    assert warned[0]["outcome"] == "fail_open"
    assert str(warned[0]["error"]).startswith("ConnectionRefusedError: ")

    registry = CollectorRegistry()
    registry.register(OutageCollector())
    assert (
        registry.get_sample_value(
            "keel_dependency_unavailable_total",
            {"dependency": "redis", "use": "rate-limit:login", "outcome": "fail_open"},
        )
        == 501
    )


def test_each_use_and_outcome_is_warned_about_on_its_own() -> None:
    with capture_logs() as logs:
        note_outage("redis", "rate-limit:login", "refused", outcome=Outcome.fail_open)
        note_outage("redis", "change-publish", "refused", outcome=Outcome.fail_open)
        note_outage("database", "connect", "refused", outcome=Outcome.fail_closed)
        note_outage("database", "connect", "refused", outcome=Outcome.fail_closed)
    assert [(entry["dependency"], entry["use"]) for entry in warnings_of(logs)] == [
        ("redis", "rate-limit:login"),
        ("redis", "change-publish"),
        ("database", "connect"),
    ]

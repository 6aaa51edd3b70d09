"""A provider's own rate limit (``rate_per_second`` in its settings), on SQLite and
PostgreSQL: a burst over it is spread over the following seconds, each message deferred
(neither failed nor failed over, its attempt not counted) until the provider has room."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from keel.notify.service.runtime import NotifyRuntime, provider_rate_rule
from tests.notify.conftest import Notify
from tests.support.provider_servers import smtp_server

RATE = 3


async def put_provider(notify: Notify, name: str, **body: Any) -> dict[str, Any]:
    answer = await notify.call("PUT", f"/providers/{name}", json=body)
    assert answer.status_code in (200, 201), answer.text
    document: dict[str, Any] = answer.json()
    return document


async def deliver_until(notify: Notify, count: int, *, timeout: float = 10.0) -> None:
    """Run the delivery jobs as they come due until the SMTP server has ``count`` messages."""
    deadline = time.monotonic() + timeout
    while len(notify.smtp.messages) < count:
        assert time.monotonic() < deadline, f"{len(notify.smtp.messages)} of {count} arrived"
        await notify.deliver()
        await asyncio.sleep(0.1)


async def test_a_burst_of_three_times_the_providers_rate_is_spread_over_seconds_and_none_fail(
    notify: Notify,
) -> None:
    provider = await put_provider(
        notify, "smtp", kind="smtp", settings=notify.smtp.settings(rate_per_second=RATE)
    )
    assert provider["settings"]["rate_per_second"] == RATE
    ids = []
    for n in range(3 * RATE):
        answer = await notify.send(
            template="welcome", to=f"user{n}@example.com", data={"name": f"U{n}"}
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])

    await deliver_until(notify, 3 * RATE)

    times = sorted(mail.received_at for mail in notify.smtp.messages)
    first_second = [at for at in times if at < times[0] + 1.0]
    assert len(first_second) < 3 * RATE  # not all at once
    assert times[-1] - times[0] >= 1.5  # three seconds' shares: about 2 s apart
    assert sorted(rcpt for mail in notify.smtp.messages for rcpt in mail.rcpt_tos) == sorted(
        f"user{n}@example.com" for n in range(3 * RATE)
    )
    messages = [await notify.message(message_id) for message_id in ids]
    assert {(m["status"], m["provider"], m["attempts"]) for m in messages} == {("sent", "smtp", 1)}
    deferred = [
        m for m in messages if any("rate_limited_until" in e["detail"] for e in m["events"])
    ]
    assert len(deferred) >= RATE
    assert all(
        e["detail"]["provider"] == "smtp"
        for m in deferred
        for e in m["events"]
        if "rate_limited_until" in e["detail"]
    )


async def test_a_provider_over_its_rate_does_not_fail_over_to_the_next(notify: Notify) -> None:
    async with smtp_server() as spare:
        await put_provider(
            notify, "smtp", kind="smtp", settings=notify.smtp.settings(rate_per_second=1)
        )
        await put_provider(notify, "spare", kind="smtp", settings=spare.settings(), position=1)
        for n in range(2):
            answer = await notify.send(
                template="welcome", to=f"u{n}@example.com", data={"name": "U"}
            )
            assert answer.status_code == 202, answer.text

        await deliver_until(notify, 2)

        assert spare.messages == []


@pytest.mark.parametrize("rate", [0, -1, 100_001, "fast"])
async def test_a_bad_rate_is_refused_with_a_problem(notify: Notify, rate: Any) -> None:
    answer = await notify.call(
        "PUT",
        "/providers/smtp",
        json={"kind": "smtp", "settings": notify.smtp.settings(rate_per_second=rate)},
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "rate_per_second" in answer.text


async def test_replicas_share_a_providers_rate_through_redis(redis_url: str) -> None:
    one, two = NotifyRuntime(), NotifyRuntime()
    one.use_limiter(redis_url)
    two.use_limiter(redis_url)
    assert one.limiter is not None
    assert two.limiter is not None
    limiters = (one.limiter, two.limiter, one.limiter, two.limiter)
    rule, key = provider_rate_rule(2), f"tenant-{uuid.uuid4()}:smtp"
    try:
        decisions = [await limiter.hit(rule, key) for limiter in limiters]
    finally:
        await one.aclose()
        await two.aclose()
    assert [decision.allowed for decision in decisions] == [True, True, False, False]
    assert all(not decision.degraded for decision in decisions)
    assert decisions[2].retry_after == 1

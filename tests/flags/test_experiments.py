"""SDK event batches, experiment results and the stale listing, on SQLite and PostgreSQL:
batches are validated and size-limited, context keys are stored only as a keyed hash,
results match statistics computed by hand, a skewed split raises the sample-ratio warning,
and flags nobody evaluates or that serve one variation to everybody are listed as stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.core.tenancy import bind_tenant
from keel.flags.models import ExperimentEvent
from keel.flags.service import statistics
from tests.support.flags_api import API, new_environment, new_flag, put_state

AB = [{"id": "a", "value": "control"}, {"id": "b", "value": "treatment"}]
FIFTY_FIFTY = {
    "rollout": {
        "variations": [{"variation": "a", "weight": 50_000}, {"variation": "b", "weight": 50_000}]
    }
}


def now() -> datetime:
    return datetime.now(UTC)


def exposure(
    flag: str, variation: str, context_key: str, at: datetime | None = None
) -> dict[str, Any]:
    return {
        "kind": "exposure",
        "flag": flag,
        "variation": variation,
        "context_key": context_key,
        "time": (at or now()).isoformat(),
    }


def track(
    event: str, context_key: str, at: datetime | None = None, value: float | None = None
) -> dict[str, Any]:
    return {
        "kind": "track",
        "event": event,
        "context_key": context_key,
        "value": value,
        "time": (at or now()).isoformat(),
    }


async def send(
    client: httpx.AsyncClient, headers: dict[str, str], env: str, events: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post(
        f"{API}/events", headers=headers, json={"environment": env, "events": events}
    )


async def experiment(client: httpx.AsyncClient, headers: dict[str, str], key: str) -> str:
    env = await new_environment(client, headers)
    await new_flag(client, headers, key, type="string", variations=AB, experiment=True)
    written = await put_state(client, headers, env, key, {"on": True, "fallthrough": FIFTY_FIFTY})
    assert written.status_code == 200, written.text
    return env


async def test_results_give_rates_wilson_intervals_and_a_z_test_against_the_control(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await experiment(client, headers, "checkout")
    earlier = now() - timedelta(hours=2)
    events: list[dict[str, Any]] = []
    for number in range(200):
        events.append(exposure("checkout", "a", f"a-{number}", earlier))
        events.append(exposure("checkout", "b", f"b-{number}", earlier))
    events += [exposure("checkout", "a", f"a-{number}") for number in range(50)]  # seen again
    events += [track("purchase", f"a-{number}") for number in range(40)]
    events += [track("purchase", f"b-{number}", value=9.5) for number in range(60)]
    events += [track("purchase", "b-0")]  # a second purchase counts once
    # Before their exposure, and of another event: no conversions.
    events += [
        track("purchase", f"a-{number}", earlier - timedelta(hours=1)) for number in range(100, 110)
    ]
    events += [track("signup", f"a-{number}") for number in range(150, 200)]
    accepted = await send(client, headers, env, events)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"accepted": len(events), "ignored": 0}

    results = await client.get(
        f"{API}/envs/{env}/flags/checkout/results?event=purchase", headers=headers
    )
    assert results.status_code == 200, results.text
    body = results.json()
    assert body["control"] == "a"
    control, treatment = body["variations"]
    assert (control["variation"], control["exposures"], control["conversions"]) == ("a", 200, 40)
    assert (treatment["variation"], treatment["exposures"], treatment["conversions"]) == (
        "b",
        200,
        60,
    )
    assert control["rate"] == pytest.approx(0.2)
    # Wilson 95 % interval of 40/200 and 60/200, computed by hand.
    assert (control["ci_low"], control["ci_high"]) == pytest.approx((0.1505, 0.2609), abs=1e-4)
    assert (treatment["ci_low"], treatment["ci_high"]) == pytest.approx((0.2407, 0.3668), abs=1e-4)
    assert control["z"] is None
    assert control["p_value"] is None
    # Pooled p = 0.25, se = sqrt(0.25 * 0.75 * (1/200 + 1/200)) = 0.0433: z = 0.1 / se.
    assert treatment["z"] == pytest.approx(2.3094, abs=1e-4)
    assert treatment["p_value"] == pytest.approx(0.02092, abs=1e-5)
    assert treatment["significant"] is True
    assert body["sample_ratio"]["expected_weights"] == {"a": 50_000, "b": 50_000}
    assert body["sample_ratio"]["chi_square"] == pytest.approx(0.0)
    assert body["sample_ratio"]["warning"] is False

    exposures_only = await client.get(f"{API}/envs/{env}/flags/checkout/results", headers=headers)
    assert exposures_only.json()["variations"][0]["conversions"] is None
    assert exposures_only.json()["variations"][0]["exposures"] == 200


async def test_a_skewed_split_raises_the_sample_ratio_mismatch_warning(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await experiment(client, headers, "banner")
    events = [exposure("banner", "a", f"u-{number}") for number in range(300)]
    events += [exposure("banner", "b", f"v-{number}") for number in range(200)]
    assert (await send(client, headers, env, events)).status_code == 202
    body = (await client.get(f"{API}/envs/{env}/flags/banner/results", headers=headers)).json()
    # Expected 250/250: chi-square = 2 * 50**2 / 250 = 20, p ~ 7.7e-6 < 0.001.
    assert body["sample_ratio"]["chi_square"] == pytest.approx(20.0)
    assert body["sample_ratio"]["p_value"] == pytest.approx(7.744e-6, rel=1e-3)
    assert body["sample_ratio"]["warning"] is True


def test_the_statistics_are_plain_functions() -> None:
    assert statistics.wilson_interval(0, 0) is None
    low, high = statistics.wilson_interval(0, 10) or (None, None)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)
    assert statistics.two_proportion_z_test(0, 10, 0, 10) == statistics.ZTest(0.0, 1.0)
    assert statistics.two_proportion_z_test(1, 0, 1, 10) is None
    mismatch = statistics.sample_ratio_test({"a": 10, "b": 1}, {"a": 100_000, "b": 0})
    assert mismatch is not None
    assert mismatch.is_mismatch
    assert statistics.sample_ratio_test({}, {"a": 50_000, "b": 50_000}) is None


async def test_event_batches_are_validated_limited_and_keep_no_context_key(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await experiment(client, headers, "promo")
    too_many = await send(client, headers, env, [track("e", "u")] * 1001)
    assert too_many.status_code == 422
    old = await send(
        client,
        headers,
        env,
        [
            track("e", "u"),
            track("e", "u", now() - timedelta(days=8)),
            track("e", "u", now() + timedelta(hours=1)),
        ],
    )
    assert old.status_code == 422
    assert old.json()["events"] == [1, 2]
    unknown_kind = await send(client, headers, env, [{"kind": "click", "time": now().isoformat()}])
    assert unknown_kind.status_code == 422
    naive = await send(client, headers, env, [{**track("e", "u"), "time": "2026-01-01T00:00:00"}])
    assert naive.status_code == 422
    no_env = await send(client, headers, "nowhere", [track("e", "u")])
    assert no_env.status_code == 404

    mixed = await send(
        client,
        headers,
        env,
        [
            exposure("promo", "a", "alice@example.com"),
            exposure("promo", "zzz", "bob"),  # no such variation
            exposure("ghost", "a", "bob"),  # no such flag
            {"kind": "summary", "flag": "promo", "count": 12, "time": now().isoformat()},
            {"kind": "summary", "flag": "ghost", "count": 1, "time": now().isoformat()},
        ],
    )
    assert mixed.status_code == 202, mixed.text
    assert mixed.json() == {"accepted": 2, "ignored": 3}
    keyring = app.state.keel.keyring
    async with app.state.keel.database.session() as session:
        bind_tenant(session, (await client.get("/auth/v1/me", headers=headers)).json()["tenant_id"])
        stored = list(
            await session.scalars(
                select(ExperimentEvent.context_hash).where(ExperimentEvent.flag_key == "promo")
            )
        )
    assert stored == [keyring.token_hash("alice@example.com")]
    assert "alice" not in stored[0]


async def test_stale_lists_flags_nobody_evaluates_and_flags_fully_rolled_out(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    for key in ("forgotten", "busy", "young", "everyone", "all-rollout", "ramping", "targeted"):
        await new_flag(client, headers, key)
    full = {
        "rollout": {
            "variations": [
                {"variation": "on", "weight": 100_000},
                {"variation": "off", "weight": 0},
            ]
        }
    }
    await put_state(
        client, headers, env, "everyone", {"on": True, "fallthrough": {"variation": "on"}}
    )
    await put_state(client, headers, env, "all-rollout", {"on": True, "fallthrough": full})
    await put_state(
        client,
        headers,
        env,
        "ramping",
        {
            "on": True,
            "fallthrough": {"variation": "on"},
            "schedule": [{"at": "2999-01-01T00:00:00Z", "fallthrough": {"variation": "off"}}],
        },
    )
    await put_state(
        client,
        headers,
        env,
        "targeted",
        {
            "on": True,
            "targets": [{"variation": "off", "values": ["u1"]}],
            "fallthrough": {"variation": "on"},
        },
    )
    three_days_ago = now() - timedelta(days=3)
    summaries = [
        {"kind": "summary", "flag": key, "count": 5, "time": three_days_ago.isoformat()}
        for key in ("forgotten", "busy", "everyone")
    ]
    assert (await send(client, headers, env, summaries)).status_code == 202
    evaluated = await client.post(
        f"{API}/evaluate",
        headers=headers,
        json={"environment": env, "context": {"key": "u"}, "flags": ["busy"]},
    )
    assert evaluated.status_code == 200

    report = await client.get(f"{API}/envs/{env}/stale?days=2", headers=headers)
    assert report.status_code == 200, report.text
    found = {entry["key"]: entry for entry in report.json()["flags"]}
    assert set(found) == {"forgotten", "everyone", "all-rollout"}
    assert found["forgotten"]["reasons"] == ["not-evaluated"]
    assert found["forgotten"]["last_evaluated_at"].startswith(three_days_ago.date().isoformat())
    assert found["everyone"]["reasons"] == ["not-evaluated", "fully-rolled-out"]
    assert found["everyone"]["serving"] == "on"
    assert found["all-rollout"] == {
        "key": "all-rollout",
        "reasons": ["fully-rolled-out"],
        "last_evaluated_at": None,
        "serving": "on",
    }
    longer = await client.get(f"{API}/envs/{env}/stale?days=5", headers=headers)
    assert {entry["key"] for entry in longer.json()["flags"]} == {"everyone", "all-rollout"}
    assert (await client.get(f"{API}/envs/{env}/stale?days=0", headers=headers)).status_code == 422

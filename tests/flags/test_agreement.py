"""One engine: ``POST /flags/v1/evaluate`` and the SDK's engine evaluating the snapshot from
``GET /flags/v1/envs/{env}/snapshot`` give the same value, variation and reason for 10 000
random contexts, over flags that use every clause operator, negation, segments, targets,
prerequisites, schedules and every rollout shape (on SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from typing import Any

import httpx

from keel_client.flags import FlagStore
from tests.support.flags_api import API, new_environment, new_flag, put_state

SEED = 20261122
CONTEXTS = 10_000
#: Contexts a request: the endpoint takes up to 1000.
BATCH = 500
PAST = "2020-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"

KEYS = [f"user-{number}" for number in range(400)]
DOMAINS = ["@corp.com", "@example.org", "@CORP.com", "@mail.net"]
COUNTRIES = ["fr", "de", "us", "jp", "br"]
VERSIONS = ["1.0.0", "1.2", "2.0.0-beta.1", "2.1.3", "10.0.0", "not-a-version", "0.9.9"]
DATES = ["2024-05-01T10:00:00Z", "2026-01-01T00:00:00+02:00", "garbage", "2019-12-31T23:59:59Z"]


def clause(attribute: str, op: str, values: list[Any], negate: bool = False) -> dict[str, Any]:
    return {"attribute": attribute, "op": op, "values": values, "negate": negate}


def rule(
    rule_id: str, clauses: list[dict[str, Any]], serve: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {"id": rule_id, "clauses": clauses, "serve": serve, **extra}


def rollout(*weights: tuple[str, int], bucket_by: str | None = None) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "variations": [{"variation": variation, "weight": weight} for variation, weight in weights]
    }
    if bucket_by:
        shape["bucket_by"] = bucket_by
    return {"rollout": shape}


THREE = [{"id": "a", "value": "alpha"}, {"id": "b", "value": "beta"}, {"id": "c", "value": "gamma"}]

#: (key, definition, state) of every flag of the test.
FLAGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "strings",
        {"type": "string", "variations": THREE},
        {
            "on": True,
            "off_variation": "c",
            "rules": [
                rule("corp", [clause("email", "ends_with", ["@corp.com"])], {"variation": "a"}),
                rule("starts", [clause("email", "starts_with", ["user-1"])], {"variation": "b"}),
                rule("contains", [clause("email", "contains", ["9@"])], {"variation": "a"}),
                rule(
                    "regex",
                    [clause("email", "matches", [r"^user-\d{2}@mail\.net$"])],
                    {"variation": "b"},
                ),
                rule(
                    "country",
                    [clause("country", "in", ["fr", "de"], negate=True)],
                    {"variation": "c"},
                ),
            ],
            "fallthrough": {"variation": "a"},
        },
    ),
    (
        "numbers",
        {
            "type": "number",
            "variations": [
                {"id": "low", "value": 1},
                {"id": "mid", "value": 2.5},
                {"id": "high", "value": 3},
            ],
        },
        {
            "on": True,
            "rules": [
                rule("minor", [clause("age", "lt", [18])], {"variation": "low"}),
                rule(
                    "exact",
                    [clause("age", "lte", [30]), clause("age", "gte", [30])],
                    {"variation": "mid"},
                ),
                rule("senior", [clause("age", "gt", [65])], {"variation": "high"}),
                rule("tags", [clause("tags", "in", ["vip"])], {"variation": "high"}),
            ],
            "fallthrough": rollout(("low", 33_000), ("mid", 33_000), ("high", 34_000)),
        },
    ),
    (
        "versions",
        {"type": "boolean"},
        {
            "on": True,
            "off_variation": "off",
            "rules": [
                rule("eq", [clause("app_version", "semver_eq", ["2.1.3"])], {"variation": "on"}),
                rule("old", [clause("app_version", "semver_lt", ["1.0.0"])], {"variation": "off"}),
                rule(
                    "new",
                    [clause("app_version", "semver_gt", ["2.0.0"])],
                    rollout(("on", 50_000), ("off", 50_000)),
                ),
            ],
            "fallthrough": {"variation": "off"},
        },
    ),
    (
        "dates",
        {
            "type": "json",
            "variations": [
                {"id": "early", "value": {"cohort": 1}},
                {"id": "late", "value": {"cohort": [2, 3]}},
            ],
        },
        {
            "on": True,
            "rules": [
                rule(
                    "before",
                    [clause("signup", "before", ["2025-01-01T00:00:00Z"])],
                    {"variation": "early"},
                ),
                rule(
                    "after", [clause("signup", "after", [1_700_000_000_000])], {"variation": "late"}
                ),
                rule(
                    "negated",
                    [clause("country", "in", ["jp"])],
                    {"variation": "late"},
                    negate=True,
                ),
            ],
            "fallthrough": {"variation": "early"},
        },
    ),
    (
        "beta-segment",
        {"type": "boolean"},
        {
            "on": True,
            "off_variation": "off",
            "targets": [
                {"variation": "off", "values": KEYS[:5]},
                {"variation": "on", "values": KEYS[5:10]},
            ],
            "rules": [
                rule("testers", [clause("key", "in_segment", ["testers"])], {"variation": "on"}),
                rule(
                    "not-testers",
                    [
                        clause("key", "in_segment", ["testers"], negate=True),
                        clause("kind", "in", ["device"]),
                    ],
                    {"variation": "off"},
                ),
            ],
            "fallthrough": rollout(("on", 20_000), ("off", 80_000)),
        },
    ),
    (
        "experiment",
        {"type": "string", "variations": THREE, "experiment": True},
        {
            "on": True,
            "rules": [
                rule(
                    "by-country",
                    [clause("country", "in", ["us"])],
                    rollout(("a", 50_000), ("b", 0), ("c", 50_000), bucket_by="country"),
                ),
            ],
            "fallthrough": rollout(("a", 34_000), ("b", 33_000), ("c", 33_000)),
        },
    ),
    (
        "org-rollout",
        {"type": "boolean", "salt": "org-salt"},
        {"on": True, "fallthrough": rollout(("on", 50_000), ("off", 50_000), bucket_by="org")},
    ),
    (
        "full-rollout",
        {"type": "boolean"},
        {"on": True, "fallthrough": rollout(("on", 100_000), ("off", 0))},
    ),
    (
        "scheduled",
        {"type": "boolean"},
        {
            "on": True,
            "fallthrough": {"variation": "off"},
            "schedule": [
                {"at": PAST, "fallthrough": rollout(("on", 25_000), ("off", 75_000))},
                {"at": FUTURE, "fallthrough": {"variation": "on"}},
            ],
        },
    ),
    (
        "needs-strings",
        {"type": "boolean"},
        {
            "on": True,
            "off_variation": "off",
            "prerequisites": [{"key": "strings", "variation": "a"}],
            "fallthrough": {"variation": "on"},
        },
    ),
    (
        "needs-beta",
        {"type": "boolean"},
        {
            "on": True,
            "off_variation": "off",
            "prerequisites": [
                {"key": "beta-segment", "variation": "on"},
                {"key": "needs-strings", "variation": "on"},
            ],
            "fallthrough": rollout(("on", 60_000), ("off", 40_000)),
        },
    ),
    (
        "killed",
        {"type": "boolean"},
        {"on": False, "off_variation": "off", "fallthrough": {"variation": "on"}},
    ),
    (
        "killed-no-off",
        {"type": "boolean"},
        {"on": False, "off_variation": None, "fallthrough": {"variation": "on"}},
    ),
    (
        "needs-killed",
        {"type": "boolean"},
        {
            "on": True,
            "off_variation": "off",
            "prerequisites": [{"key": "killed", "variation": "on"}],
            "fallthrough": {"variation": "on"},
        },
    ),
]

TESTERS = {
    "key": "testers",
    "included": KEYS[10:30],
    "excluded": KEYS[30:40],
    "rules": [
        {"id": "staff", "clauses": [clause("email", "ends_with", ["@corp.com"])]},
        {
            "id": "old-app",
            "clauses": [clause("app_version", "semver_lt", ["1.0.0"]), clause("age", "gte", [21])],
        },
    ],
}


def random_context(rng: random.Random) -> dict[str, Any]:
    key = rng.choice(KEYS) if rng.random() < 0.7 else f"anon-{rng.getrandbits(40):x}"
    context: dict[str, Any] = {"key": key}
    if rng.random() < 0.2:
        context["kind"] = rng.choice(["user", "device", "organization"])
    if rng.random() < 0.8:
        context["email"] = f"{key}{rng.choice(DOMAINS)}" if rng.random() < 0.9 else 42
    if rng.random() < 0.8:
        context["country"] = rng.choice(COUNTRIES)
    if rng.random() < 0.7:
        roll = rng.random()
        context["age"] = (
            rng.randint(5, 90) if roll < 0.7 else rng.choice([30, 30.0, "30", True, None, 17.5])
        )
    if rng.random() < 0.6:
        context["app_version"] = rng.choice(VERSIONS)
    if rng.random() < 0.6:
        context["signup"] = (
            rng.choice(DATES)
            if rng.random() < 0.6
            else rng.randint(1_600_000_000_000, 1_800_000_000_000)
        )
    if rng.random() < 0.4:
        context["tags"] = rng.sample(["vip", "beta", "staff", "new"], rng.randint(0, 3))
    if rng.random() < 0.5:
        context["org"] = f"org-{rng.randint(1, 50)}"
    return context


async def test_server_and_sdk_evaluation_agree_on_10000_random_contexts(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    made = await client.post(f"{API}/envs/{env}/segments", headers=headers, json=TESTERS)
    assert made.status_code == 201, made.text
    for key, definition, state in FLAGS:
        await new_flag(client, headers, key, **definition)
        written = await put_state(client, headers, env, key, state)
        assert written.status_code == 200, (key, written.text)
    snapshot = await client.get(f"{API}/envs/{env}/snapshot", headers=headers)
    store = FlagStore(snapshot.json())
    assert store.problems() == {}
    assert sorted(store.keys()) == sorted(key for key, _, _ in FLAGS)

    rng = random.Random(SEED)
    reasons: set[str] = set()
    variations: set[tuple[str, str | None]] = set()
    mismatches = []
    contexts = [random_context(rng) for _ in range(CONTEXTS)]
    for first in range(0, CONTEXTS, BATCH):
        batch = contexts[first : first + BATCH]
        answer = await client.post(
            f"{API}/evaluate", headers=headers, json={"environment": env, "contexts": batch}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == snapshot.json()["version"]
        assert len(answer.json()["results"]) == len(batch)
        for context, served in zip(batch, answer.json()["results"], strict=True):
            local = {key: store.evaluate(key, context).to_dict() for key in store.keys()}  # noqa: SIM118
            if served != local:
                mismatches.append((context, served, local))
            for key, detail in served.items():
                reason = detail["reason"]
                reasons.add(f"{reason['kind']}:{reason.get('rule_id', '')}")
                variations.add((key, detail["variation"]))
    assert mismatches[:3] == []

    # A single context is answered the same way as in a batch.
    single = await client.post(
        f"{API}/evaluate", headers=headers, json={"environment": env, "context": contexts[0]}
    )
    assert single.status_code == 200, single.text
    assert single.json()["flags"] == {
        key: store.evaluate(key, contexts[0]).to_dict()
        for key in store.keys()  # noqa: SIM118
    }

    # The contexts did exercise every path: each rule, targets, prerequisites, off, and
    # every variation of every rollout.
    for rule_id in (
        "corp",
        "starts",
        "contains",
        "regex",
        "country",
        "minor",
        "exact",
        "senior",
        "tags",
        "eq",
        "old",
        "new",
        "before",
        "after",
        "negated",
        "testers",
        "not-testers",
        "by-country",
    ):
        assert f"RULE_MATCH:{rule_id}" in reasons, rule_id
    for kind in ("TARGET_MATCH:", "FALLTHROUGH:", "OFF:", "PREREQUISITE_FAILED:"):
        assert kind in reasons, kind
    for expected in [
        ("numbers", "low"),
        ("numbers", "mid"),
        ("numbers", "high"),
        ("experiment", "a"),
        ("experiment", "b"),
        ("experiment", "c"),
        ("org-rollout", "on"),
        ("org-rollout", "off"),
        ("scheduled", "on"),
        ("scheduled", "off"),
        ("needs-beta", "on"),
        ("needs-beta", "off"),
        ("killed-no-off", None),
    ]:
        assert expected in variations, expected
    assert ("full-rollout", "off") not in variations

"""The checks the server runs on writes: every problem is named with the path of its field."""

from __future__ import annotations

from typing import Any

import pytest

from keel_client.flags import validate_flag, validate_segment
from tests.client.flags.engine_support import (
    ON_OFF,
    clause,
    flag,
    percent_on,
    rollout,
    rule,
    segment,
)

EVERY_OPERATOR = [
    clause("country", "in", ["US", 1, True]),
    clause("email", "starts_with", ["ana"]),
    clause("email", "ends_with", ["@corp.com"]),
    clause("email", "contains", ["@"]),
    clause("email", "matches", [r"^[a-z]+@corp\.com$"]),
    clause("age", "lt", [99]),
    clause("age", "lte", [99.5]),
    clause("age", "gt", [0]),
    clause("age", "gte", [18]),
    clause("version", "semver_eq", ["1.2.3-rc.1+b7"]),
    clause("version", "semver_lt", ["2.0"]),
    clause("version", "semver_gt", ["1.0.0"]),
    clause("signup", "before", ["2026-12-01T00:00:00Z"]),
    clause("signup", "after", [1_700_000_000_000, "2020-01-01T00:00:00.123+02:00"]),
    clause("", "in_segment", ["beta"], negate=True),
]


def test_a_flag_using_everything_is_valid() -> None:
    complete = flag(
        experiment=True,
        salt="s1",
        prerequisites=[{"key": "other", "variation": "on"}],
        targets=[{"variation": "on", "values": ["user-1"]}],
        rules=[
            rule("every-op", *EVERY_OPERATOR),
            {**rule("r2", clause("a", "in", ["b"])), "serve": percent_on(10, bucket_by="org")},
        ],
        fallthrough=rollout(("on", 0), ("off", 100_000)),
        schedule=[
            {"at": "2026-12-01T00:00:00Z", "fallthrough": percent_on(5)},
            {"at": "2026-12-08T00:00:00Z", "fallthrough": {"variation": "on"}},
        ],
    )
    assert validate_flag(complete) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"key": ""}, "key: must be a non-empty string"),
        ({"version": -1}, "version: must be a non-negative integer"),
        ({"type": "bool"}, "type: must be one of boolean, json, number, string"),
        (
            {"variations": [*ON_OFF, {"id": "on", "value": False}]},
            "variations[2].id: duplicate variation id 'on'",
        ),
        (
            {"variations": [{"id": "on", "value": 1}, {"id": "off", "value": False}]},
            "variations[0].value: is not a boolean value",
        ),
        (
            {"variations": [{"id": "on"}, {"id": "off", "value": False}]},
            "variations[0].value: is required",
        ),
        ({"on": 1}, "on: must be true or false"),
        ({"experiment": "yes"}, "experiment: must be true or false"),
        ({"salt": ""}, "salt: must be a non-empty string"),
        ({"off_variation": "gone"}, "off_variation: unknown variation 'gone'"),
        (
            {"prerequisites": [{"key": "f", "variation": "on"}]},
            "prerequisites[0].key: a flag cannot be its own prerequisite",
        ),
        (
            {"prerequisites": [{"key": "g"}]},
            "prerequisites[0].variation: must be a non-empty string",
        ),
        (
            {"targets": [{"variation": "on", "values": [1]}]},
            "targets[0].values[0]: must be a string (a context key)",
        ),
        (
            {"targets": [{"variation": "x", "values": []}]},
            "targets[0].variation: unknown variation 'x'",
        ),
        (
            {"rules": [rule("r", clause("a", "in", ["x"])), rule("r", clause("a", "in", ["y"]))]},
            "rules[1].id: duplicate rule id 'r'",
        ),
        (
            {"rules": [{"id": "r", "clauses": [], "serve": {"variation": "on"}}]},
            "rules[0].clauses: must hold at least one clause",
        ),
        (
            {"rules": [{"id": "r", "clauses": [clause("a", "in", ["x"])]}]},
            "rules[0].serve: is required",
        ),
        (
            {"rules": [rule("r", clause("a", "regex", ["x"]))]},
            "rules[0].clauses[0].op: unknown operator 'regex'",
        ),
        (
            {"rules": [rule("r", clause("", "in", ["x"]))]},
            "rules[0].clauses[0].attribute: must be a non-empty string",
        ),
        (
            {"rules": [rule("r", clause("a", "in", []))]},
            "rules[0].clauses[0].values: must hold at least one value",
        ),
        (
            {"rules": [rule("r", clause("a", "in", [None]))]},
            "rules[0].clauses[0].values[0]: must be a string, number or boolean",
        ),
        (
            {"rules": [rule("r", clause("a", "ends_with", [1]))]},
            "rules[0].clauses[0].values[0]: must be a string",
        ),
        (
            {"rules": [rule("r", clause("a", "matches", [r"(a)\1"]))]},
            "rules[0].clauses[0].values[0]: not a valid regular expression (RE2 syntax): "
            "invalid escape sequence: \\1",
        ),
        (
            {"rules": [rule("r", clause("a", "matches", ["(?=lookahead)"]))]},
            "rules[0].clauses[0].values[0]: not a valid regular expression (RE2 syntax): "
            "invalid perl operator: (?=",
        ),
        (
            {"rules": [rule("r", clause("a", "matches", ["a" * 1025]))]},
            "rules[0].clauses[0].values[0]: a pattern may be at most 1024 characters",
        ),
        (
            {"rules": [rule("r", clause("a", "gte", ["18"]))]},
            "rules[0].clauses[0].values[0]: must be a number",
        ),
        (
            {"rules": [rule("r", clause("a", "gte", [float("nan")]))]},
            "rules[0].clauses[0].values[0]: must be a number",
        ),
        (
            {"rules": [rule("r", clause("a", "semver_lt", ["v1"]))]},
            "rules[0].clauses[0].values[0]: 'v1' is not a semantic version",
        ),
        (
            {"rules": [rule("r", clause("a", "before", ["2026-12-01"]))]},
            "rules[0].clauses[0].values[0]: "
            "must be an RFC 3339 date-time with a zone, or epoch milliseconds",
        ),
        (
            {"rules": [rule("r", clause("a", "after", ["2026-12-01T00:00:00"]))]},
            "rules[0].clauses[0].values[0]: "
            "must be an RFC 3339 date-time with a zone, or epoch milliseconds",
        ),
        (
            {"rules": [rule("r", clause("a", "in", ["x"], negate="no"))]},
            "rules[0].clauses[0].negate: must be true or false",
        ),
        (
            {"rules": [{**rule("r", clause("a", "in", ["x"])), "negate": 1}]},
            "rules[0].negate: must be true or false",
        ),
        (
            {"fallthrough": {"variation": "on", "rollout": {}}},
            'fallthrough: must be {"variation": id} or {"rollout": {...}}',
        ),
        (
            {"fallthrough": rollout(("on", 50_000), ("off", 40_000))},
            "fallthrough.rollout.variations: weights sum to 90000, not 100000",
        ),
        (
            {"fallthrough": rollout(("on", -1), ("off", 100_000))},
            "fallthrough.rollout.variations[0].weight: must be an integer from 0 to 100000",
        ),
        (
            {"fallthrough": rollout(("on", 50_000.0), ("off", 50_000))},
            "fallthrough.rollout.variations[0].weight: must be an integer from 0 to 100000",
        ),
        (
            {"fallthrough": rollout(("maybe", 100_000))},
            "fallthrough.rollout.variations[0].variation: unknown variation 'maybe'",
        ),
        (
            {"fallthrough": rollout(("on", 100_000), bucket_by="")},
            "fallthrough.rollout.bucket_by: must be a non-empty string (an attribute)",
        ),
        (
            {"schedule": [{"at": "tomorrow", "fallthrough": {"variation": "on"}}]},
            "schedule[0].at: must be an RFC 3339 date-time with a zone",
        ),
        (
            {
                "schedule": [
                    {"at": "2026-12-01T00:00:00Z", "fallthrough": {"variation": "on"}},
                    {"at": "2026-12-01T01:00:00+01:00", "fallthrough": {"variation": "off"}},
                ]
            },
            "schedule[1].at: two steps at 2026-12-01T01:00:00+01:00",
        ),
        ({"schedule": [{"at": "2026-12-01T00:00:00Z"}]}, "schedule[0].fallthrough: is required"),
        ({"schedule": {"at": "2026-12-01T00:00:00Z"}}, "schedule: must be a list"),
    ],
)
def test_each_problem_names_its_field(change: dict[str, Any], problem: str) -> None:
    assert validate_flag(flag(**change)) == [problem]


def test_without_variations_nothing_can_be_served() -> None:
    assert validate_flag(flag(variations=[])) == [
        "variations: must hold at least one variation",
        "off_variation: unknown variation 'off'",
        "fallthrough.variation: unknown variation 'off'",
    ]


def test_a_missing_fallthrough_and_several_problems_at_once() -> None:
    broken = flag(on=None, rules="none")
    del broken["fallthrough"]
    assert validate_flag(broken) == [
        "on: must be true or false",
        "rules: must be a list",
        "fallthrough: is required",
    ]


@pytest.mark.parametrize("not_a_flag", [None, [], "flag", 3])
def test_a_flag_must_be_an_object(not_a_flag: Any) -> None:
    assert validate_flag(not_a_flag) == ["a flag must be a JSON object"]


@pytest.mark.parametrize(
    ("flag_type", "value", "valid"),
    [
        ("string", "blue", True),
        ("string", 1, False),
        ("number", 1, True),
        ("number", 2.5, True),
        ("number", True, False),
        ("number", float("inf"), False),
        ("json", {"a": [1, None, {"b": "c"}]}, True),
        ("json", None, True),
        ("json", {1: "a"}, False),
        ("json", {"a": object()}, False),
    ],
)
def test_variation_values_must_have_the_flag_type(flag_type: str, value: Any, valid: bool) -> None:
    problems = validate_flag(
        flag(
            type=flag_type,
            off_variation=None,
            fallthrough={"variation": "v"},
            variations=[{"id": "v", "value": value}],
        )
    )
    assert problems == ([] if valid else [f"variations[0].value: is not a {flag_type} value"])


class TestSegments:
    def test_a_valid_segment(self) -> None:
        assert (
            validate_segment(
                segment(
                    "beta",
                    included=["u1"],
                    excluded=["u2"],
                    rules=[
                        {"id": "corp", "clauses": [clause("email", "ends_with", ["@corp.com"])]},
                    ],
                )
            )
            == []
        )

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            ({"key": None}, "key: must be a non-empty string"),
            ({"included": ["u1", 2]}, "included[1]: must be a string (a context key)"),
            ({"excluded": "u1"}, "excluded: must be a list"),
            (
                {"rules": [{"id": "r", "clauses": [clause("", "in_segment", ["other"])]}]},
                "rules[0].clauses[0].op: a segment rule cannot use in_segment",
            ),
            (
                {"rules": [{"id": "r", "clauses": [clause("a", "gte", ["x"])]}]},
                "rules[0].clauses[0].values[0]: must be a number",
            ),
            ({"version": "3"}, "version: must be a non-negative integer"),
        ],
    )
    def test_each_problem_names_its_field(self, change: dict[str, Any], problem: str) -> None:
        assert validate_segment({**segment("beta"), **change}) == [problem]

    def test_a_segment_must_be_an_object(self) -> None:
        assert validate_segment(["beta"]) == ["a segment must be a JSON object"]

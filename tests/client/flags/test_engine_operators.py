"""Clause operators, negation, list attributes, wrong types, missing attributes, segments."""

from __future__ import annotations

import time
from typing import Any

import pytest

from keel_client.flags import ErrorKind, ReasonKind
from tests.client.flags.engine_support import clause, flag, rule, segment, store

MISSING = object()

# (op, clause values, attribute value, matches?)
CASES: list[tuple[str, list[Any], Any, bool]] = [
    # in: strict types, JSON number equality
    ("in", ["US", "CA"], "CA", True),
    ("in", ["US", "CA"], "FR", False),
    ("in", ["US"], "us", False),
    ("in", [1, 2.5], 1.0, True),
    ("in", [1, 2.5], 2.5, True),
    ("in", [1], "1", False),
    ("in", ["1"], 1, False),
    ("in", [1], True, False),
    ("in", [True], 1, False),
    ("in", [True], True, True),
    ("in", [False, "x"], False, True),
    ("in", ["US"], {"country": "US"}, False),
    ("in", ["US"], None, False),
    # strings
    ("starts_with", ["adm", "ops-"], "ops-team", True),
    ("starts_with", ["adm"], "sysadm", False),
    ("starts_with", ["1"], 12, False),
    ("ends_with", ["@corp.com"], "ana@corp.com", True),
    ("ends_with", ["@corp.com"], "ana@corp.com.evil", False),
    ("ends_with", ["@corp.com"], None, False),
    ("contains", ["beta", "canary"], "app-canary-1", True),
    ("contains", ["beta"], "alpha", False),
    ("contains", ["1"], 1, False),
    ("matches", [r"^user-\d+$"], "user-42", True),
    ("matches", [r"^user-\d+$"], "user-x", False),
    ("matches", ["corp"], "a@corp.com", True),  # a search, not an anchored match
    ("matches", ["x", r"\d"], "a1", True),
    ("matches", [r"\d"], 7, False),
    # numbers
    ("lt", [10], 9, True),
    ("lt", [10], 10, False),
    ("lt", [5, 10], 7, True),  # any value
    ("lte", [10], 10, True),
    ("lte", [10], 10.5, False),
    ("gt", [18], 18.5, True),
    ("gt", [18], 18, False),
    ("gt", [30, 18], 20, True),
    ("gte", [18], 18, True),
    ("gte", [18], 17, False),
    ("gte", [18], "30", False),
    ("gte", [0], True, False),
    ("lt", [10], None, False),
    # semantic versions
    ("semver_eq", ["1.2.3"], "1.2.3", True),
    ("semver_eq", ["1.2.0"], "1.2", True),
    ("semver_eq", ["1.2.3"], "1.2.3+build.7", True),
    ("semver_eq", ["1.2.3"], "1.2.4", False),
    ("semver_lt", ["2.0.0"], "1.10.0", True),
    ("semver_lt", ["1.0.0"], "1.0.0-alpha", True),
    ("semver_lt", ["1.0.0"], "1.0.0", False),
    ("semver_gt", ["1.9.0"], "1.10.0", True),
    ("semver_gt", ["1.9.0"], "1.9.0-rc.1", False),
    ("semver_gt", ["1.0.0"], "not-a-version", False),
    ("semver_gt", ["1.0.0"], 2, False),
    # dates: RFC 3339 strings or epoch milliseconds
    ("before", ["2026-12-01T00:00:00Z"], "2026-11-30T23:59:59Z", True),
    ("before", ["2026-12-01T00:00:00Z"], "2026-12-01T00:00:00Z", False),
    ("before", ["2026-12-01T00:00:00Z"], "2026-12-01T00:30:00+01:00", True),
    ("before", ["2026-12-01T00:00:00Z"], 1_796_083_199_000, True),
    ("before", [1_796_083_200_000], "2026-11-30T12:00:00.5Z", True),
    ("after", ["2026-12-01T00:00:00Z"], "2026-12-01T00:00:00.001Z", True),
    ("after", ["2026-12-01T00:00:00Z"], "2026-11-01T00:00:00Z", False),
    ("after", ["2026-12-01T00:00:00Z"], "2027-01-01", False),  # a date alone is not RFC 3339
    ("after", ["2026-12-01T00:00:00Z"], "2027-01-01T00:00:00", False),  # no zone
    ("after", ["2026-12-01T00:00:00Z"], True, False),
]


def _matches(test_clause: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> bool:
    detail = store(flag(rules=[rule("r", test_clause)]), **kwargs).evaluate("f", context, None)
    assert detail.reason.kind in (ReasonKind.RULE_MATCH, ReasonKind.FALLTHROUGH), detail
    return detail.reason.kind is ReasonKind.RULE_MATCH


@pytest.mark.parametrize(("op", "values", "attribute", "expected"), CASES)
def test_operator(op: str, values: list[Any], attribute: Any, expected: bool) -> None:
    context = {"key": "user-1", "attr": attribute}
    assert _matches(clause("attr", op, values), context) is expected


@pytest.mark.parametrize(("op", "values", "attribute", "expected"), CASES)
def test_negation_inverts_every_operator(
    op: str, values: list[Any], attribute: Any, expected: bool
) -> None:
    context = {"key": "user-1", "attr": attribute}
    assert _matches(clause("attr", op, values, negate=True), context) is (not expected)


@pytest.mark.parametrize(
    "op",
    [
        "in",
        "starts_with",
        "ends_with",
        "contains",
        "matches",
        "lt",
        "gte",
        "semver_eq",
        "before",
        "after",
    ],
)
def test_a_missing_attribute_matches_no_operator_and_every_negated_one(op: str) -> None:
    values_by_op: dict[str, list[Any]] = {
        "lt": [1],
        "gte": [1],
        "semver_eq": ["1.0.0"],
        "before": [0],
        "after": [0],
    }
    values = values_by_op.get(op, ["x"])
    assert _matches(clause("absent", op, values), {"key": "u"}) is False
    assert _matches(clause("absent", op, values, negate=True), {"key": "u"}) is True


def test_a_list_attribute_matches_if_any_element_does() -> None:
    groups = clause("groups", "in", ["admins"])
    assert _matches(groups, {"key": "u", "groups": ["staff", "admins"]})
    assert not _matches(groups, {"key": "u", "groups": ["staff"]})
    assert not _matches(groups, {"key": "u", "groups": []})
    assert _matches(
        clause("emails", "ends_with", ["@corp.com"]),
        {"key": "u", "emails": [3, None, "x@corp.com"]},
    )
    assert _matches(
        clause("versions", "semver_gt", ["2.0.0"]), {"key": "u", "versions": ["1.0.0", "2.1.0"]}
    )
    # Negated: no element may match.
    assert not _matches(
        clause("groups", "in", ["admins"], negate=True), {"key": "u", "groups": ["staff", "admins"]}
    )
    assert _matches(
        clause("groups", "in", ["admins"], negate=True), {"key": "u", "groups": ["staff"]}
    )


def test_kind_defaults_to_user_and_key_is_an_attribute() -> None:
    assert _matches(clause("kind", "in", ["user"]), {"key": "u"})
    assert not _matches(clause("kind", "in", ["user"]), {"key": "u", "kind": "device"})
    assert _matches(clause("key", "starts_with", ["svc-"]), {"key": "svc-billing"})


def test_all_clauses_of_a_rule_must_match_and_rule_negate_inverts_the_rule() -> None:
    clauses = (clause("country", "in", ["US"]), clause("age", "gte", [18]))
    both = {"key": "u", "country": "US", "age": 20}
    one = {"key": "u", "country": "US", "age": 16}
    evaluate = store(flag(rules=[rule("r", *clauses)])).evaluate
    assert evaluate("f", both, None).reason.kind is ReasonKind.RULE_MATCH
    assert evaluate("f", one, None).reason.kind is ReasonKind.FALLTHROUGH
    negated = store(flag(rules=[rule("r", *clauses, negate=True)])).evaluate
    assert negated("f", both, None).reason.kind is ReasonKind.FALLTHROUGH
    assert negated("f", one, None).reason.kind is ReasonKind.RULE_MATCH


def test_a_catastrophic_pattern_runs_in_linear_time() -> None:
    # (a+)+$ against "aaa…ab" takes exponential time in a backtracking engine (Python's re
    # needs minutes at 30 characters); RE2 answers in linear time.
    evaluate = store(flag(rules=[rule("r", clause("name", "matches", ["(a+)+$"]))])).evaluate
    started = time.perf_counter()
    detail = evaluate("f", {"key": "u", "name": "a" * 100_000 + "b"}, None)
    elapsed = time.perf_counter() - started
    assert detail.reason.kind is ReasonKind.FALLTHROUGH
    assert elapsed < 2.0, f"{elapsed * 1000:.1f} ms"  # backtracking: minutes; RE2: milliseconds
    assert evaluate("f", {"key": "u", "name": "b" + "a" * 100_000}, None).reason.kind is (
        ReasonKind.RULE_MATCH
    )


class TestSegments:
    def _evaluate(
        self, context: dict[str, Any], *segments: dict[str, Any], negate: bool = False
    ) -> ReasonKind:
        keys = [item["key"] for item in segments] or ["beta"]
        test_flag = flag(rules=[rule("r", clause("", "in_segment", keys, negate=negate))])
        return store(test_flag, segments=list(segments)).evaluate("f", context, None).reason.kind

    def test_included_wins_over_excluded_and_rules(self) -> None:
        beta = segment(
            "beta",
            included=["u1"],
            excluded=["u1", "u2"],
            rules=[{"id": "all", "clauses": [clause("key", "starts_with", ["u"])]}],
        )
        assert self._evaluate({"key": "u1"}, beta) is ReasonKind.RULE_MATCH
        assert self._evaluate({"key": "u2"}, beta) is ReasonKind.FALLTHROUGH  # excluded
        assert self._evaluate({"key": "u3"}, beta) is ReasonKind.RULE_MATCH  # a rule
        assert self._evaluate({"key": "x"}, beta) is ReasonKind.FALLTHROUGH

    def test_any_segment_rule_matches_and_all_its_clauses_must(self) -> None:
        beta = segment(
            "beta",
            rules=[
                {
                    "id": "corp",
                    "clauses": [
                        clause("email", "ends_with", ["@corp.com"]),
                        clause("age", "gte", [18]),
                    ],
                },
                {"id": "staff", "clauses": [clause("groups", "in", ["staff"])]},
            ],
        )
        assert self._evaluate({"key": "a", "email": "a@corp.com", "age": 30}, beta) is (
            ReasonKind.RULE_MATCH
        )
        assert self._evaluate({"key": "a", "email": "a@corp.com", "age": 3}, beta) is (
            ReasonKind.FALLTHROUGH
        )
        assert self._evaluate({"key": "a", "groups": ["staff"]}, beta) is ReasonKind.RULE_MATCH

    def test_in_any_of_several_segments_and_negated(self) -> None:
        one, two = segment("one", included=["a"]), segment("two", included=["b"])
        assert self._evaluate({"key": "b"}, one, two) is ReasonKind.RULE_MATCH
        assert self._evaluate({"key": "c"}, one, two) is ReasonKind.FALLTHROUGH
        assert self._evaluate({"key": "b"}, one, two, negate=True) is ReasonKind.FALLTHROUGH
        assert self._evaluate({"key": "c"}, one, two, negate=True) is ReasonKind.RULE_MATCH

    def test_a_missing_segment_contains_nobody(self) -> None:
        assert self._evaluate({"key": "a"}) is ReasonKind.FALLTHROUGH

    def test_a_malformed_segment_makes_the_flag_an_error(self) -> None:
        broken = segment("beta", included="u1")  # not a list
        test_store = store(
            flag(rules=[rule("r", clause("", "in_segment", ["beta"]))]), segments=[broken]
        )
        detail = test_store.evaluate("f", {"key": "u1"}, "default")
        assert (detail.value, detail.reason.error_kind) == ("default", ErrorKind.MALFORMED_FLAG)
        assert test_store.problems() == {"segments.beta": ["included: must be a list"]}

    def test_a_changed_segment_applies_to_the_flags_using_it(self) -> None:
        test_store = store(
            flag(rules=[rule("r", clause("", "in_segment", ["beta"]))]),
            segments=[segment("beta", included=["a"])],
        )
        assert test_store.evaluate("f", {"key": "b"}, None).reason.kind is ReasonKind.FALLTHROUGH
        changed = test_store.with_changes(segments={"beta": segment("beta", included=["b"])})
        assert changed.evaluate("f", {"key": "b"}, None).reason.kind is ReasonKind.RULE_MATCH
        assert test_store.evaluate("f", {"key": "b"}, None).reason.kind is ReasonKind.FALLTHROUGH
        removed = changed.with_changes(segments={"beta": None})
        assert removed.evaluate("f", {"key": "b"}, None).reason.kind is ReasonKind.FALLTHROUGH

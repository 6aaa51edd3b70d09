"""The evaluation order, and the reason of every path: off, prerequisites, targets, rules,
fallthrough, schedule, errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

import keel_client.flags
from keel_client.flags import (
    ErrorKind,
    EvaluationDetail,
    EvaluationReason,
    FlagStore,
    ReasonKind,
    evaluate,
)
from tests.client.flags.engine_support import ON_OFF, clause, flag, percent_on, rollout, rule, store

USER = {"key": "user-1", "email": "ana@corp.com", "country": "US"}


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(keel_client.flags.__all__) == [
        "ErrorKind",
        "EvaluationDetail",
        "EvaluationReason",
        "EventStats",
        "FlagStore",
        "FlagType",
        "FlagsChange",
        "FlagsChangeCallback",
        "FlagsClient",
        "FlagsError",
        "FlagsNotFound",
        "FlagsPermissionDenied",
        "FlagsUnavailable",
        "ReasonKind",
        "SyncFlagsClient",
        "bucket",
        "default_flags_cache_path",
        "evaluate",
        "validate_flag",
        "validate_segment",
    ]
    for name in keel_client.flags.__all__:
        assert getattr(keel_client.flags, name) is not None


class TestReasons:
    def test_flag_not_found(self) -> None:
        detail = store().evaluate("nope", USER, "fallback")
        assert detail == EvaluationDetail(
            "fallback",
            None,
            EvaluationReason(ReasonKind.ERROR, error_kind=ErrorKind.FLAG_NOT_FOUND),
        )
        assert detail.is_default_value
        assert detail.to_dict() == {
            "value": "fallback",
            "variation": None,
            "reason": {"kind": "ERROR", "error_kind": "FLAG_NOT_FOUND"},
        }

    def test_off_serves_the_off_variation(self) -> None:
        detail = store(flag(on=False, fallthrough={"variation": "on"})).evaluate("f", USER, None)
        assert (detail.value, detail.variation, detail.reason.to_dict()) == (
            False,
            "off",
            {"kind": "OFF"},
        )

    def test_off_without_an_off_variation_serves_the_default(self) -> None:
        detail = store(flag(on=False, off_variation=None)).evaluate("f", USER, "dflt")
        assert (detail.value, detail.variation, detail.reason.kind) == (
            "dflt",
            None,
            ReasonKind.OFF,
        )

    def test_target_match(self) -> None:
        test_flag = flag(targets=[{"variation": "on", "values": ["user-1", "user-2"]}])
        detail = store(test_flag).evaluate("f", USER, None)
        assert (detail.value, detail.variation, detail.reason.to_dict()) == (
            True,
            "on",
            {"kind": "TARGET_MATCH"},
        )
        assert store(test_flag).evaluate("f", {"key": "user-3"}, None).reason.kind is (
            ReasonKind.FALLTHROUGH
        )

    def test_rule_match_carries_the_rule_id_and_index(self) -> None:
        test_flag = flag(
            rules=[
                rule("r-fr", clause("country", "in", ["FR"])),
                rule("r-corp", clause("email", "ends_with", ["@corp.com"])),
            ]
        )
        detail = store(test_flag).evaluate("f", USER, None)
        assert detail.reason.to_dict() == {
            "kind": "RULE_MATCH",
            "rule_id": "r-corp",
            "rule_index": 1,
        }
        assert detail.value is True

    def test_fallthrough(self) -> None:
        detail = store(flag()).evaluate("f", USER, None)
        assert (detail.value, detail.variation, detail.reason.to_dict()) == (
            False,
            "off",
            {"kind": "FALLTHROUGH"},
        )

    def test_prerequisite_failed_names_the_prerequisite_and_serves_off(self) -> None:
        parent = flag(
            "parent",
            prerequisites=[{"key": "child", "variation": "on"}],
            fallthrough={"variation": "on"},
        )
        detail = store(parent, flag("child")).evaluate("parent", USER, None)
        assert (detail.value, detail.variation) == (False, "off")
        assert detail.reason.to_dict() == {
            "kind": "PREREQUISITE_FAILED",
            "prerequisite_key": "child",
        }

    def test_in_experiment_only_for_experiments_served_by_a_rollout(self) -> None:
        experiment = flag(
            experiment=True,
            fallthrough=percent_on(50),
            rules=[rule("fixed", clause("country", "in", ["FR"]))],
        )
        evaluate = store(experiment).evaluate
        assert evaluate("f", USER, None).reason.to_dict() == {
            "kind": "FALLTHROUGH",
            "in_experiment": True,
        }
        assert evaluate("f", {"key": "u", "country": "FR"}, None).reason.in_experiment is False
        in_rule = flag(
            experiment=True,
            rules=[{**rule("r", clause("country", "in", ["US"])), "serve": percent_on(50)}],
        )
        reason = store(in_rule).evaluate("f", USER, None).reason
        assert (reason.kind, reason.rule_id, reason.in_experiment) == (
            ReasonKind.RULE_MATCH,
            "r",
            True,
        )
        not_experiment = store(flag(fallthrough=percent_on(50))).evaluate("f", USER, None)
        assert not_experiment.reason.in_experiment is False


class TestOrder:
    def test_off_beats_everything_the_kill_switch(self) -> None:
        everything: dict[str, Any] = dict(
            targets=[{"variation": "on", "values": ["user-1"]}],
            rules=[rule("r", clause("country", "in", ["US"]))],
            fallthrough={"variation": "on"},
        )
        live = store(flag(**everything))
        killed = store(flag(on=False, **everything))
        for key in ("user-1", "user-2", "user-3"):
            context = {**USER, "key": key}
            assert live.evaluate("f", context, None).value is True
            detail = killed.evaluate("f", context, None)
            assert (detail.value, detail.reason.kind) == (False, ReasonKind.OFF)

    def test_prerequisites_come_before_targets(self) -> None:
        parent = flag(
            "parent",
            prerequisites=[{"key": "child", "variation": "on"}],
            targets=[{"variation": "on", "values": ["user-1"]}],
        )
        detail = store(parent, flag("child", on=False)).evaluate("parent", USER, None)
        assert detail.reason.kind is ReasonKind.PREREQUISITE_FAILED

    def test_targets_come_before_rules(self) -> None:
        test_flag = flag(
            targets=[{"variation": "off", "values": ["user-1"]}],
            rules=[rule("r", clause("country", "in", ["US"]))],
        )
        detail = store(test_flag).evaluate("f", USER, None)
        assert (detail.variation, detail.reason.kind) == ("off", ReasonKind.TARGET_MATCH)

    def test_the_first_target_listing_a_key_wins(self) -> None:
        test_flag = flag(
            targets=[
                {"variation": "off", "values": ["user-1"]},
                {"variation": "on", "values": ["user-1"]},
            ]
        )
        assert store(test_flag).evaluate("f", USER, None).variation == "off"

    def test_targets_match_the_context_key_only(self) -> None:
        test_flag = flag(targets=[{"variation": "on", "values": ["ana@corp.com"]}])
        assert store(test_flag).evaluate("f", USER, None).reason.kind is ReasonKind.FALLTHROUGH

    def test_rules_are_tried_in_order(self) -> None:
        rules = [
            rule("first", clause("country", "in", ["US"]), serve="off"),
            rule("second", clause("country", "in", ["US"]), serve="on"),
        ]
        detail = store(flag(rules=rules)).evaluate("f", USER, None)
        assert (detail.variation, detail.reason.rule_id, detail.reason.rule_index) == (
            "off",
            "first",
            0,
        )
        detail = store(flag(rules=rules[::-1])).evaluate("f", USER, None)
        assert (detail.variation, detail.reason.rule_id) == ("on", "second")


class TestPrerequisites:
    def _parent(self, variation: str = "on", **fields: Any) -> dict[str, Any]:
        return flag(
            "parent",
            prerequisites=[{"key": "child", "variation": variation}],
            fallthrough={"variation": "on"},
            **fields,
        )

    def test_met_when_the_prerequisite_is_on_and_gives_the_variation(self) -> None:
        child = flag("child", fallthrough={"variation": "on"})
        detail = store(self._parent(), child).evaluate("parent", USER, None)
        assert (detail.value, detail.reason.kind) == (True, ReasonKind.FALLTHROUGH)

    def test_failed_when_the_prerequisite_gives_another_variation(self) -> None:
        child = flag("child", fallthrough={"variation": "off"})
        assert store(self._parent(), child).evaluate("parent", USER, None).reason.kind is (
            ReasonKind.PREREQUISITE_FAILED
        )

    def test_failed_when_the_prerequisite_is_off_even_if_its_off_variation_is_the_one(self) -> None:
        child = flag("child", on=False, off_variation="on")
        assert store(self._parent(), child).evaluate("parent", USER, None).reason.kind is (
            ReasonKind.PREREQUISITE_FAILED
        )

    def test_failed_when_the_prerequisite_does_not_exist(self) -> None:
        detail = store(self._parent()).evaluate("parent", USER, None)
        assert detail.reason.to_dict() == {
            "kind": "PREREQUISITE_FAILED",
            "prerequisite_key": "child",
        }

    def test_failed_without_an_off_variation_serves_the_default(self) -> None:
        detail = store(self._parent(off_variation=None)).evaluate("parent", USER, "dflt")
        assert (detail.value, detail.variation) == ("dflt", None)

    def test_the_prerequisite_is_evaluated_for_the_same_context(self) -> None:
        child = flag("child", targets=[{"variation": "on", "values": ["user-1"]}])
        test_store = store(self._parent(), child)
        assert test_store.evaluate("parent", USER, None).value is True
        assert test_store.evaluate("parent", {"key": "user-2"}, None).value is False

    def test_a_cycle_is_a_malformed_flag(self) -> None:
        a = flag(
            "a", prerequisites=[{"key": "b", "variation": "on"}], fallthrough={"variation": "on"}
        )
        b = flag(
            "b", prerequisites=[{"key": "c", "variation": "on"}], fallthrough={"variation": "on"}
        )
        c = flag(
            "c", prerequisites=[{"key": "a", "variation": "on"}], fallthrough={"variation": "on"}
        )
        test_store = store(a, b, c)
        for key in ("a", "b", "c"):
            detail = test_store.evaluate(key, USER, "dflt")
            assert (detail.value, detail.reason.kind, detail.reason.error_kind) == (
                "dflt",
                ReasonKind.ERROR,
                ErrorKind.MALFORMED_FLAG,
            )
        # A flag that is off never reaches its prerequisites: no cycle is walked.
        assert store(a, b, {**c, "on": False}).evaluate("a", USER, None).reason.kind is (
            ReasonKind.PREREQUISITE_FAILED
        )

    @pytest.mark.parametrize(
        ("depth", "kind"), [(10, ReasonKind.FALLTHROUGH), (11, ReasonKind.ERROR)]
    )
    def test_chains_deeper_than_ten_are_malformed(self, depth: int, kind: ReasonKind) -> None:
        chain = [
            flag(
                f"f{index}",
                prerequisites=[{"key": f"f{index + 1}", "variation": "on"}],
                fallthrough={"variation": "on"},
            )
            for index in range(depth)
        ] + [flag(f"f{depth}", fallthrough={"variation": "on"})]
        assert store(*chain).evaluate("f0", USER, None).reason.kind is kind

    def test_a_malformed_prerequisite_makes_its_dependants_malformed(self) -> None:
        child = flag("child", fallthrough={"variation": "missing"})
        detail = store(self._parent(), child).evaluate("parent", USER, None)
        assert detail.reason.error_kind is ErrorKind.MALFORMED_FLAG


class TestSchedule:
    STEPS = [
        {"at": "2026-12-08T00:00:00Z", "fallthrough": percent_on(25)},
        {"at": "2026-12-01T00:00:00Z", "fallthrough": percent_on(5)},  # order does not matter
        {"at": "2026-12-15T00:00:00+01:00", "fallthrough": {"variation": "on"}},
    ]

    def _served(self, now: datetime) -> float:
        evaluate = store(flag(schedule=self.STEPS)).evaluate
        keys = [f"user-{index}" for index in range(4000)]
        return sum(bool(evaluate("f", {"key": key}, None, now=now).value) for key in keys) / 4000

    @pytest.mark.parametrize(
        ("now", "low", "high"),
        [
            (datetime(2026, 11, 30, tzinfo=UTC), 0.0, 0.0),
            (datetime(2026, 12, 1, tzinfo=UTC), 0.03, 0.07),
            (datetime(2026, 12, 7, 23, 59, tzinfo=UTC), 0.03, 0.07),
            (datetime(2026, 12, 8, tzinfo=UTC), 0.22, 0.28),
            (datetime(2026, 12, 14, 23, 30, tzinfo=UTC), 1.0, 1.0),  # 00:00+01:00 has passed
            (datetime(2026, 12, 14, 22, 30), 0.22, 0.28),  # naive: read as UTC
        ],
    )
    def test_the_latest_step_whose_time_has_come_wins(
        self, now: datetime, low: float, high: float
    ) -> None:
        assert low <= self._served(now) <= high

    def test_each_step_keeps_the_users_of_the_step_before(self) -> None:
        evaluate = store(flag(schedule=self.STEPS)).evaluate
        moments = [datetime(2026, 12, day, tzinfo=UTC) for day in (1, 8, 15)]
        previous: set[str] = set()
        for now in moments:
            enabled = {
                f"u{i}" for i in range(5000) if evaluate("f", {"key": f"u{i}"}, None, now=now).value
            }
            assert previous <= enabled
            previous = enabled

    def test_without_now_the_current_time_decides(self) -> None:
        past = [{"at": "2020-01-01T00:00:00Z", "fallthrough": {"variation": "on"}}]
        future = [{"at": "2999-01-01T00:00:00Z", "fallthrough": {"variation": "on"}}]
        assert store(flag(schedule=past)).evaluate("f", USER, None).value is True
        assert store(flag(schedule=future)).evaluate("f", USER, None).value is False


class TestErrors:
    def test_a_malformed_flag_is_an_error_and_does_not_spoil_the_others(self) -> None:
        broken = flag("broken", fallthrough=rollout(("on", 60_000), ("off", 30_000)))
        test_store = store(broken, flag("fine"))
        detail = test_store.evaluate("broken", USER, "dflt")
        assert detail.to_dict() == {
            "value": "dflt",
            "variation": None,
            "reason": {"kind": "ERROR", "error_kind": "MALFORMED_FLAG"},
        }
        assert test_store.evaluate("fine", USER, None).variation == "off"
        assert test_store.problems() == {
            "flags.broken": ["fallthrough.rollout.variations: weights sum to 90000, not 100000"]
        }

    @pytest.mark.parametrize(
        "broken",
        [
            {"fallthrough": {"variation": "nope"}},
            {"variations": [{"id": "on", "value": "yes"}], "off_variation": None},
            {"rules": [rule("r", clause("a", "matches", ["(a"]))]},
            {"rules": [rule("r", clause("a", "bogus", ["x"]))]},
            {"targets": [{"variation": "maybe", "values": ["user-1"]}]},
            {"on": "yes"},
            {"key": "other"},  # filed under "f" in the snapshot
        ],
    )
    def test_malformed_flags_evaluate_to_malformed_flag(self, broken: dict[str, Any]) -> None:
        detail = (
            store(flag(**broken)).evaluate("f", USER, "dflt")
            if "key" not in broken
            else (FlagStore({"flags": {"f": flag(**broken)}}).evaluate("f", USER, "dflt"))
        )
        assert (detail.value, detail.reason.error_kind) == ("dflt", ErrorKind.MALFORMED_FLAG)

    def test_a_flag_that_is_not_an_object_is_malformed(self) -> None:
        test_store = FlagStore({"flags": {"f": ["not", "a", "flag"]}})
        assert test_store.evaluate("f", USER, None).reason.error_kind is ErrorKind.MALFORMED_FLAG
        assert test_store.problems() == {"flags.f": ["a flag must be a JSON object"]}

    @pytest.mark.parametrize(
        ("value_type", "variations", "is_error"),
        [
            ("boolean", ON_OFF, False),
            ("string", ON_OFF, True),
            ("number", ON_OFF, True),
            ("json", ON_OFF, False),
            ("number", [{"id": "on", "value": 1}, {"id": "off", "value": 2.5}], False),
            ("boolean", [{"id": "on", "value": 1}, {"id": "off", "value": 0}], True),
            ("string", [{"id": "on", "value": "a"}, {"id": "off", "value": "b"}], False),
        ],
    )
    def test_wrong_type(self, value_type: Any, variations: list[Any], is_error: bool) -> None:
        flag_type = {bool: "boolean", str: "string"}.get(type(variations[0]["value"]), "number")
        test_store = store(flag(type=flag_type, variations=variations))
        detail = test_store.evaluate("f", USER, "dflt", value_type=value_type)
        if is_error:
            assert (detail.value, detail.reason.error_kind) == ("dflt", ErrorKind.WRONG_TYPE)
        else:
            assert detail.variation == "off"

    @pytest.mark.parametrize("context", [{}, {"key": 7}, {"key": None}, "user-1", None, ["key"]])
    def test_an_invalid_context_is_an_error(self, context: Any) -> None:
        detail = store(flag()).evaluate("f", context, "dflt")
        assert (detail.value, detail.reason.error_kind) == ("dflt", ErrorKind.INVALID_CONTEXT)

    def test_an_unexpected_exception_is_an_error_not_a_raise(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Exploding(dict[str, Any]):
            def get(self, key: str, default: Any = None) -> Any:
                if key == "country":
                    raise RuntimeError("secret-context-value")
                return super().get(key, default)

        test_store = store(flag(rules=[rule("r", clause("country", "in", ["US"]))]))
        detail = test_store.evaluate("f", Exploding(key="user-1"), "dflt")
        assert (detail.value, detail.reason.error_kind) == ("dflt", ErrorKind.EXCEPTION)
        assert "RuntimeError" in caplog.text
        assert "secret-context-value" not in caplog.text

    def test_the_convenience_function_takes_a_snapshot_or_a_store(self) -> None:
        snapshot = {"flags": {"f": flag(fallthrough={"variation": "on"})}}
        assert evaluate(snapshot, "f", USER, False).value is True
        assert evaluate(FlagStore(snapshot), "f", USER, False).value is True
        assert evaluate({"flags": ["not", "a", "mapping"]}, "f", USER, "dflt").value == "dflt"
        with pytest.raises(ValueError, match="flags"):
            FlagStore({"flags": ["not", "a", "mapping"]})


class TestStore:
    def test_json_values_are_copied_for_each_caller(self) -> None:
        variations = [{"id": "a", "value": {"limits": [1, 2]}}, {"id": "b", "value": []}]
        test_store = store(
            flag(
                type="json",
                variations=variations,
                off_variation="a",
                fallthrough={"variation": "a"},
            )
        )
        first = test_store.evaluate("f", USER, None).value
        first["limits"].append(3)
        assert test_store.evaluate("f", USER, None).value == {"limits": [1, 2]}

    def test_with_changes_replaces_and_deletes_flags_and_keeps_the_old_store(self) -> None:
        old = store(flag("a"), flag("b"))
        new = old.with_changes(
            flags={"a": flag("a", fallthrough={"variation": "on"}), "b": None}, version=2
        )
        assert (new.evaluate("a", USER, None).value, new.version) == (True, 2)
        assert new.evaluate("b", USER, None).reason.error_kind is ErrorKind.FLAG_NOT_FOUND
        assert old.evaluate("a", USER, None).value is False
        assert sorted(old.keys()) == ["a", "b"]

    def test_evaluate_all(self) -> None:
        results = store(flag("a"), flag("b", on=False)).evaluate_all(USER)
        assert {key: detail.reason.kind for key, detail in results.items()} == {
            "a": ReasonKind.FALLTHROUGH,
            "b": ReasonKind.OFF,
        }

    def test_a_context_may_be_any_mapping(self) -> None:
        class Context(Mapping[str, Any]):
            def __init__(self, **data: Any) -> None:
                self._data = data

            def __getitem__(self, key: str) -> Any:
                return self._data[key]

            def __iter__(self) -> Any:
                return iter(self._data)

            def __len__(self) -> int:
                return len(self._data)

        test_flag = flag(rules=[rule("r", clause("country", "in", ["US"]))])
        assert store(test_flag).evaluate("f", Context(key="u", country="US"), None).value is True

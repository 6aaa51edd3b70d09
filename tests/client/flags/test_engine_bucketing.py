"""Sticky bucketing: the formula, its stability across processes, the split of a rollout,
and which users move when weights change."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import pytest

from keel_client.flags import FlagStore, bucket
from tests.client.flags.engine_support import flag, percent_on, rollout, store

# (salt, value) -> bucket, computed once from the formula and frozen here: a change in these
# numbers moves every user of every rollout.
GOLDEN = [
    ("checkout-v2", "user-1", 0.5293013589753516),
    ("checkout-v2", "user-2", 0.5753851795099535),
    ("new-cart", "user-1", 0.41008614218607886),
    ("salt", "", 0.8111553947043182),
    ("flag", "é", 0.03361482579493031),
    # LaunchDarkly hashes f"{flag_key}.{salt}.{key}"; its SDKs' tests expect these buckets
    # for flag "hashKey", salt "saltyA" (0.42157587, 0.6708485, 0.10343106).
    ("hashKey.saltyA", "userKeyA", 0.4215758743392494),
    ("hashKey.saltyA", "userKeyB", 0.6708484965703435),
    ("hashKey.saltyA", "userKeyC", 0.1034310617276969),
]


def _independent_bucket(salt: str, value: str) -> float:
    digest = hashlib.sha1(f"{salt}.{value}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:15], 16) / 0xFFFFFFFFFFFFFFF


@pytest.mark.parametrize(("salt", "value", "expected"), GOLDEN)
def test_golden_buckets(salt: str, value: str, expected: float) -> None:
    assert bucket(salt, value) == expected
    assert _independent_bucket(salt, value) == expected


def test_another_process_gets_the_same_buckets() -> None:
    pairs = [(salt, value) for salt, value, _ in GOLDEN] + [("x", f"k{i}") for i in range(50)]
    script = (
        "import json, sys\n"
        "from keel_client.flags import bucket\n"
        "pairs = json.load(sys.stdin)\n"
        "print(json.dumps([bucket(salt, value) for salt, value in pairs]))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(answer.stdout) == [bucket(salt, value) for salt, value in pairs]


def _random_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def test_a_50_50_rollout_over_100_000_random_keys_is_within_one_percent() -> None:
    evaluate = store(flag(fallthrough=percent_on(50))).evaluate
    keys = _random_keys(100_000, seed=1)
    on = sum(1 for key in keys if evaluate("f", {"key": key}, None).value)
    assert 49_000 <= on <= 51_000, on
    assert 49_000 <= len(keys) - on <= 51_000


def test_three_way_weights_are_honoured() -> None:
    variations = [{"id": name, "value": name} for name in ("a", "b", "c")]
    test_flag = flag(
        type="string",
        variations=variations,
        off_variation="a",
        fallthrough=rollout(("a", 10_000), ("b", 0), ("c", 90_000)),
    )
    evaluate = store(test_flag).evaluate
    served = [evaluate("f", {"key": key}, None).variation for key in _random_keys(20_000, seed=2)]
    assert served.count("b") == 0
    assert 1_800 <= served.count("a") <= 2_200


def test_raising_a_rollout_from_20_to_30_percent_moves_nobody_out() -> None:
    keys = _random_keys(50_000, seed=3)
    before = store(flag(fallthrough=percent_on(20))).evaluate
    after = store(flag(fallthrough=percent_on(30))).evaluate
    enabled_before = {key for key in keys if before("f", {"key": key}, None).value}
    enabled_after = {key for key in keys if after("f", {"key": key}, None).value}
    assert enabled_before <= enabled_after
    moved_in = len(enabled_after) - len(enabled_before)
    assert 0.09 * len(keys) <= moved_in <= 0.11 * len(keys)


def test_bucketing_is_sticky_and_salted_per_flag() -> None:
    keys = _random_keys(2_000, seed=4)
    one = store(flag("one", fallthrough=percent_on(50)), flag("two", fallthrough=percent_on(50)))
    first = [one.evaluate("one", {"key": key}, None).value for key in keys]
    assert first == [one.evaluate("one", {"key": key}, None).value for key in keys]
    # The salt defaults to the flag key: another flag splits the same users differently...
    second = [one.evaluate("two", {"key": key}, None).value for key in keys]
    agreement = sum(a == b for a, b in zip(first, second, strict=True)) / len(keys)
    assert 0.45 <= agreement <= 0.55
    # ...unless it shares the salt.
    shared = store(flag("two", salt="one", fallthrough=percent_on(50)))
    assert [shared.evaluate("two", {"key": key}, None).value for key in keys] == first


def test_the_served_variation_follows_the_formula() -> None:
    evaluate = store(flag(fallthrough=percent_on(37))).evaluate
    for key in _random_keys(2_000, seed=5):
        expected = _independent_bucket("f", key) * 100_000 < 37_000
        assert evaluate("f", {"key": key}, None).value is expected


class TestBucketBy:
    def _store(self) -> FlagStore:
        return store(flag(fallthrough=percent_on(50, bucket_by="org")))

    def test_contexts_sharing_the_attribute_get_the_same_variation(self) -> None:
        evaluate = self._store().evaluate
        for org in _random_keys(200, seed=6):
            served = {
                evaluate("f", {"key": f"{org}-{i}", "org": org}, None).value for i in range(5)
            }
            assert len(served) == 1
            assert served == {_independent_bucket("f", org) < 0.5}

    def test_an_integer_attribute_buckets_as_its_decimal_string(self) -> None:
        evaluate = self._store().evaluate
        for org in range(200):
            assert evaluate("f", {"key": "k", "org": org}, None).value is (
                evaluate("f", {"key": "k", "org": str(org)}, None).value
            )

    @pytest.mark.parametrize("org", [None, 1.5, ["a"], True])
    def test_a_missing_or_unusable_attribute_buckets_by_the_key(self, org: object) -> None:
        evaluate = self._store().evaluate
        by_key = store(flag(fallthrough=percent_on(50))).evaluate
        for key in _random_keys(200, seed=7):
            context = {"key": key} if org is None else {"key": key, "org": org}
            assert evaluate("f", context, None).value is by_key("f", {"key": key}, None).value

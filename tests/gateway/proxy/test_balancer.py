"""The balancers as pure functions of availability, in-flight counts and keys."""

from __future__ import annotations

from collections import Counter

from keel.gateway.proxy.balancer import (
    HashRing,
    LeastInflight,
    SmoothWeightedRoundRobin,
    hash_key_of,
)

ALL_UP = [True, True, True]
IDLE = [0, 0, 0]


def test_smooth_weighted_round_robin_follows_weights_without_bursts() -> None:
    balancer = SmoothWeightedRoundRobin([5, 1, 1])
    picks = [balancer.choose(ALL_UP, IDLE, None) for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # nginx's sequence: a a b a c a a


def test_round_robin_skips_unavailable_targets() -> None:
    balancer = SmoothWeightedRoundRobin([1, 1, 1])
    picks = Counter(balancer.choose([True, False, True], IDLE, None) for _ in range(10))
    assert picks == {0: 5, 2: 5}
    assert balancer.choose([False, False, False], IDLE, None) is None


def test_least_inflight_prefers_the_idle_target() -> None:
    balancer = LeastInflight([1, 1, 1])
    assert balancer.choose(ALL_UP, [3, 0, 2], None) == 1
    assert balancer.choose([True, False, True], [3, 0, 2], None) == 2


def test_least_inflight_ties_go_to_weight_then_in_turn() -> None:
    assert LeastInflight([1, 3, 1]).choose(ALL_UP, IDLE, None) == 1
    balancer = LeastInflight([1, 1, 1])
    assert [balancer.choose(ALL_UP, IDLE, None) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_consistent_hash_is_stable_for_a_key() -> None:
    ring = HashRing(["http://a", "http://b", "http://c"], [1, 1, 1])
    first = ring.choose(ALL_UP, IDLE, "user-42")
    assert all(ring.choose(ALL_UP, IDLE, "user-42") == first for _ in range(20))
    again = HashRing(["http://a", "http://b", "http://c"], [1, 1, 1])
    assert again.choose(ALL_UP, IDLE, "user-42") == first  # another replica agrees


def test_consistent_hash_moves_only_the_keys_of_a_removed_target() -> None:
    names = [f"http://10.0.0.{n}:8080" for n in range(5)]
    ring = HashRing(names, [1] * 5)
    keys = [f"key-{n}" for n in range(5000)]
    before = {key: ring.choose([True] * 5, [0] * 5, key) for key in keys}
    without_2 = [True, True, False, True, True]
    after = {key: ring.choose(without_2, [0] * 5, key) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved
    assert all(before[key] == 2 for key in moved)  # only target 2's keys moved
    assert all(after[key] != 2 for key in keys)
    shares = Counter(before.values())
    assert all(600 < count < 1400 for count in shares.values())  # a roughly even spread


def test_consistent_hash_weights_shift_the_share() -> None:
    ring = HashRing(["http://a", "http://b"], [3, 1])
    shares = Counter(ring.choose([True, True], [0, 0], f"k{n}") for n in range(4000))
    assert shares[0] > 2 * shares[1]


def test_consistent_hash_without_a_key_spreads_round_robin() -> None:
    ring = HashRing(["http://a", "http://b"], [1, 1])
    assert Counter(ring.choose([True, True], [0, 0], None) for _ in range(10)) == {0: 5, 1: 5}


def test_hash_key_of_each_source() -> None:
    headers = [(b"x-tenant", b"acme"), (b"cookie", b"a=1; session=s-9; b=2")]
    common = {"client_ip": "10.0.0.7", "principal": "user-1", "path": "/orders/3"}
    assert hash_key_of("ip", headers=headers, **common) == "10.0.0.7"
    assert hash_key_of("principal", headers=headers, **common) == "user-1"
    assert hash_key_of("path", headers=headers, **common) == "/orders/3"
    assert hash_key_of("header:X-Tenant", headers=headers, **common) == "acme"
    assert hash_key_of("cookie:session", headers=headers, **common) == "s-9"
    assert hash_key_of("header:X-Other", headers=headers, **common) is None
    assert hash_key_of("cookie:missing", headers=headers, **common) is None

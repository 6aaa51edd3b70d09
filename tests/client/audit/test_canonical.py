"""Canonical JSON: the fast path gives exactly RFC 8785's bytes, whatever the document."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from keel_client.audit import canonical_json

ALPHABET = 'abcXYZ09 _-"\\/\n\t\x00\x1f\x7f\u2028é€😀\ufeff'


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, -1, 2**53, -(2**53), 2**53 + 1, rng.randrange(-(10**6), 10**6)])
    if choice == 3:
        return rng.choice([0.5, -1e21, 1e-7, 3.0, 1 / 3])
    if choice in (4, 5):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(12)))
    if choice == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "B", "aa", "_", "z1", "é", "€", "😀", "\ufb33", "10", "1"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("seed", range(20))
def test_the_same_bytes_as_rfc8785_on_random_documents(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        value = {"data": random_value(rng), "id": "x"}
        try:
            expected = rfc8785.dumps(value)
        except rfc8785.CanonicalizationError as error:
            with pytest.raises(type(error)):
                canonical_json(value)
            continue
        assert canonical_json(value) == expected


def test_keys_outside_ascii_sort_by_utf16_units_as_rfc8785_says() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FB33, though after it in code
    # points (the order of Python's sort_keys).
    value = {"\ufb33": 2, "\U0001f600": 1}
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).index("\U0001f600".encode()) < canonical_json(value).index(
        "\ufb33".encode()
    )


def test_integers_beyond_2_53_and_lone_surrogates_take_the_general_path() -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        canonical_json({"n": 2**53})
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json({"s": "\ud800"})

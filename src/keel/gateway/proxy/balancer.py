"""Choosing a pool's target for a request: round robin, least in-flight, consistent hash.

Each balancer is pure state plus ``choose(available, inflight, hash_key) -> index | None``:
``available[i]`` says whether target ``i`` may take a request now (not ejected, healthy, its
breaker not open), ``inflight[i]`` how many requests it is serving. ``None`` means no target is
available. The runtime (``runtime.py``) owns the health state and calls these.

- :class:`SmoothWeightedRoundRobin` is nginx's smooth weighted round robin: weights 5, 1, 1
  give ``a a b a c a a`` rather than ``a a a a a b c``, so a heavy target never gets a burst.
- :class:`LeastInflight` picks the fewest requests in flight; ties go to the larger weight,
  then round robin, so an idle pool still spreads its load.
- :class:`HashRing` places points per target in proportion to its weight (``VIRTUAL_NODES`` on
  average) on a 64-bit ring; a key
  goes to the first available point clockwise of its hash. Taking a target out moves only the
  keys that were on it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

#: Ring points per unit of weight: enough for an even spread (standard deviation of the
#: share of each target a few percent) at a few thousand points for a typical pool.
VIRTUAL_NODES: Final = 160


class Balancer(Protocol):
    def choose(
        self, available: Sequence[bool], inflight: Sequence[int], hash_key: str | None
    ) -> int | None: ...


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin over the available targets."""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._current = [0] * len(weights)

    def choose(
        self, available: Sequence[bool], inflight: Sequence[int], hash_key: str | None
    ) -> int | None:
        total = 0
        best = -1
        current = self._current
        for index, weight in enumerate(self._weights):
            if not available[index]:
                continue
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            return None
        current[best] -= total
        return best


class LeastInflight:
    """Fewest requests in flight; ties to the larger weight, then in turn."""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._next = 0

    def choose(
        self, available: Sequence[bool], inflight: Sequence[int], hash_key: str | None
    ) -> int | None:
        count = len(self._weights)
        best = -1
        # Scanning from a rotating start makes the last tie-break round robin.
        for step in range(count):
            index = (self._next + step) % count
            if not available[index]:
                continue
            if (
                best < 0
                or inflight[index] < inflight[best]
                or (
                    inflight[index] == inflight[best] and self._weights[index] > self._weights[best]
                )
            ):
                best = index
        if best < 0:
            return None
        self._next = (best + 1) % count
        return best


def ring_hash(key: str) -> int:
    """A stable 64-bit hash (Python's ``hash`` is salted per process: replicas would
    disagree about where a key goes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with virtual nodes. ``names`` identify the targets (their URLs), so
    the ring is the same in every replica and after a restart."""

    def __init__(self, names: Sequence[str], weights: Sequence[int]) -> None:
        points: list[tuple[int, int]] = []
        # Points proportional to weight, VIRTUAL_NODES per target on average: weights 1 and
        # 1000 would otherwise make 160 000 points for one target.
        scale = VIRTUAL_NODES * len(weights) / sum(weights)
        for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
            for replica in range(max(1, round(weight * scale))):
                points.append((ring_hash(f"{name}#{replica}"), index))
        points.sort()
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self._fallback = SmoothWeightedRoundRobin(weights)

    def choose(
        self, available: Sequence[bool], inflight: Sequence[int], hash_key: str | None
    ) -> int | None:
        if hash_key is None:
            # No key to hash on (no principal, no such header): spread like round robin
            # rather than sending every keyless request to one target.
            return self._fallback.choose(available, inflight, None)
        start = bisect.bisect(self._hashes, ring_hash(hash_key))
        count = len(self._owners)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if available[owner]:
                return owner
        return None


def new_balancer(strategy: str, names: Sequence[str], weights: Sequence[int]) -> Balancer:
    if strategy == "least_inflight":
        return LeastInflight(weights)
    if strategy == "consistent_hash":
        return HashRing(names, weights)
    return SmoothWeightedRoundRobin(weights)


def hash_key_of(
    hash_on: str,
    *,
    client_ip: str | None,
    principal: str | None,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
) -> str | None:
    """The consistent-hash key of a request for a pool's ``hash_on``; ``None`` when the
    request does not carry it (then the ring falls back to round robin)."""
    if hash_on == "ip":
        return client_ip
    if hash_on == "principal":
        return principal
    if hash_on == "path":
        return path
    kind, _, name = hash_on.partition(":")
    if kind == "header":
        wanted = name.lower().encode("latin-1")
        for header, value in headers:
            if header.lower() == wanted:
                return value.decode("latin-1")
        return None
    if kind == "cookie":
        return _cookies(headers).get(name)
    return None


def _cookies(headers: Sequence[tuple[bytes, bytes]]) -> Mapping[str, str]:
    cookies: dict[str, str] = {}
    for header, value in headers:
        if header.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            name, separator, cookie = pair.strip().partition("=")
            if separator and name not in cookies:
                cookies[name] = cookie
    return cookies

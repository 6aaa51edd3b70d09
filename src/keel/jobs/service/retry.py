"""When a failed job runs again: a pure policy, tested directly.

The default waits ``attempt**4`` seconds plus a jitter, at most an hour (1 s, 16 s, 81 s,
4 min, 10 min, 22 min, 40 min, then the cap). A job may carry its own policy
(:class:`Backoff`, given at enqueue): the same curve scaled by ``base_seconds`` and capped at
``max_seconds``. A worker may also name the wait of one failure (``retry_in_seconds``), which
overrides either.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keel.core.errors import ValidationFailed

#: No retry waits longer than an hour by default.
MAX_BACKOFF_SECONDS = 3600.0
#: No policy may ask for more than a week between attempts.
LONGEST_BACKOFF_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Backoff:
    """A job's own retry policy: ``base_seconds * attempt**4`` (plus jitter), at most
    ``max_seconds``. ``Backoff(5, 5)`` retries every 5 s; ``Backoff(0.1, 10)`` retries fast."""

    base_seconds: float = 1.0
    max_seconds: float = MAX_BACKOFF_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= LONGEST_BACKOFF_SECONDS:
            raise ValidationFailed("backoff base_seconds is above 0 and at most a week.")
        if not self.base_seconds <= self.max_seconds <= LONGEST_BACKOFF_SECONDS:
            raise ValidationFailed("backoff max_seconds is at least base_seconds, at most a week.")

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Backoff | None:
        """The policy stored on a job (``None``: the default)."""
        if value is None:
            return None
        return cls(float(value["base_seconds"]), float(value["max_seconds"]))

    def to_json(self) -> dict[str, float]:
        return {"base_seconds": self.base_seconds, "max_seconds": self.max_seconds}


def backoff_seconds(
    attempt: int,
    *,
    rng: random.Random | None = None,
    cap: float = MAX_BACKOFF_SECONDS,
    base: float = 1.0,
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base * attempt**4`` plus
    a random jitter of up to a tenth of it and one ``base``, so jobs that failed together do
    not retry together; at most ``cap``."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    wait = base * float(attempt**4)
    jitter = (rng or random).uniform(0.0, wait * 0.1 + base)
    return min(wait + jitter, cap)


def retry_delay(attempt: int, policy: Backoff | None, *, rng: random.Random | None = None) -> float:
    """The wait after failed attempt ``attempt`` under a job's ``policy`` (or the default)."""
    if policy is None:
        return backoff_seconds(attempt, rng=rng)
    return backoff_seconds(attempt, rng=rng, cap=policy.max_seconds, base=policy.base_seconds)

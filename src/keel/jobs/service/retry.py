"""When a failed job runs again: a pure policy, tested directly."""

from __future__ import annotations

import random

#: No retry waits longer than an hour.
MAX_BACKOFF_SECONDS = 3600.0


def backoff_seconds(
    attempt: int, *, rng: random.Random | None = None, cap: float = MAX_BACKOFF_SECONDS
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``attempt**4`` plus a
    random jitter of up to a tenth of it and one second, so jobs that failed together do not
    retry together; at most ``cap``."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    base = float(attempt**4)
    jitter = (rng or random).uniform(0.0, base * 0.1 + 1.0)
    return min(base + jitter, cap)

"""Pure statistics of experiments: conversion rates with a Wilson interval, a two-proportion
z-test against the control, and the sample-ratio-mismatch test of exposures against the
rollout's weights. Plain numbers in, plain numbers out; the service feeds them counts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: The two-sided 95 % quantile of the standard normal distribution.
Z_95 = 1.959963984540054
#: Below this p-value the exposures do not follow the rollout's weights.
SRM_P_THRESHOLD = 0.001
#: Below this p-value a variation differs from the control.
SIGNIFICANCE_LEVEL = 0.05


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / trials`` (``None`` without trials)."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float


def two_proportion_z_test(
    control_successes: int, control_trials: int, successes: int, trials: int
) -> ZTest | None:
    """The pooled two-proportion z-test of a variation against the control, two-sided
    (``None`` when either side has no trials)."""
    if control_trials <= 0 or trials <= 0:
        return None
    pooled = (control_successes + successes) / (control_trials + trials)
    variance = pooled * (1 - pooled) * (1 / control_trials + 1 / trials)
    if variance <= 0:
        return ZTest(0.0, 1.0)  # both rates 0 % or both 100 %: no difference to see
    z = (successes / trials - control_successes / control_trials) / math.sqrt(variance)
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)))  # two-sided normal tail


@dataclass(frozen=True)
class SampleRatioTest:
    chi_square: float
    p_value: float

    @property
    def is_mismatch(self) -> bool:
        return self.p_value < SRM_P_THRESHOLD


def sample_ratio_test(
    exposures: Mapping[str, int], weights: Mapping[str, int]
) -> SampleRatioTest | None:
    """Chi-square goodness of fit of ``exposures`` per variation against the rollout's
    ``weights``; ``None`` with no exposures or fewer than two weighted variations. Any
    exposure of a variation the rollout gives no weight is a mismatch outright."""
    total = sum(exposures.values())
    weighted = {variation: weight for variation, weight in weights.items() if weight > 0}
    if total <= 0 or not weighted:
        return None
    if any(count > 0 and variation not in weighted for variation, count in exposures.items()):
        return SampleRatioTest(math.inf, 0.0)
    if len(weighted) < 2:
        return None
    weight_sum = sum(weighted.values())
    observed = [exposures.get(variation, 0) for variation in weighted]
    expected = [total * weight / weight_sum for weight in weighted.values()]
    statistic = sum(
        (seen - want) ** 2 / want for seen, want in zip(observed, expected, strict=True)
    )
    # Imported here: scipy costs seconds of every `keel` command's start otherwise.
    from scipy.special import chdtrc

    return SampleRatioTest(statistic, float(chdtrc(len(observed) - 1, statistic)))

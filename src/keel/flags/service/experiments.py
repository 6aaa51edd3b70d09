"""Experiment results of a flag in an environment, from its stored SDK events: per
variation the contexts exposed and converted, with the statistics of
:mod:`keel.flags.service.statistics`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.flags.models import ExperimentEvent
from keel.flags.service import statistics
from keel.flags.service.documents import state_document
from keel.flags.service.rollouts import effective_fallthrough, rollout_weights
from keel.flags.service.states import get_state


@dataclass(frozen=True)
class VariationResult:
    variation: str
    exposures: int
    conversions: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None
    significant: bool | None


@dataclass(frozen=True)
class SampleRatio:
    expected_weights: dict[str, int]
    chi_square: float
    p_value: float
    warning: bool


@dataclass(frozen=True)
class ExperimentResults:
    environment: str
    flag: str
    event: str | None
    control: str
    variations: list[VariationResult]
    sample_ratio: SampleRatio | None


async def experiment_results(
    session: AsyncSession,
    tenant_id: str,
    environment_key: str,
    key: str,
    *,
    event: str | None = None,
) -> ExperimentResults:
    """Per variation: distinct contexts exposed, those of them that sent ``event`` after
    their first exposure, the rate with its 95 % Wilson interval, and a two-proportion
    z-test against the control (the first variation); plus the sample-ratio-mismatch test
    of exposures against the fallthrough rollout's weights."""
    view = await get_state(session, tenant_id, environment_key, key)
    environment_id = view.environment.id
    exposed = (
        select(
            ExperimentEvent.context_hash.label("context_hash"),
            ExperimentEvent.variation.label("variation"),
            func.min(ExperimentEvent.occurred_at).label("first_at"),
        )
        .where(
            ExperimentEvent.environment_id == environment_id,
            ExperimentEvent.kind == "exposure",
            ExperimentEvent.flag_key == key,
        )
        .group_by(ExperimentEvent.context_hash, ExperimentEvent.variation)
        .subquery()
    )
    exposures = {
        str(variation): int(count)
        for variation, count in (
            await session.execute(
                select(exposed.c.variation, func.count()).group_by(exposed.c.variation)
            )
        ).all()
    }
    conversions: dict[str, int] = {}
    if event is not None:
        rows = await session.execute(
            select(exposed.c.variation, func.count(distinct(exposed.c.context_hash)))
            .join(
                ExperimentEvent,
                and_(
                    ExperimentEvent.context_hash == exposed.c.context_hash,
                    ExperimentEvent.environment_id == environment_id,
                    ExperimentEvent.kind == "track",
                    ExperimentEvent.event_name == event,
                    ExperimentEvent.occurred_at >= exposed.c.first_at,
                ),
            )
            .group_by(exposed.c.variation)
        )
        conversions = {str(variation): int(count) for variation, count in rows.all()}
    variation_ids = [str(entry.get("id")) for entry in view.flag.variations]
    control = variation_ids[0]
    results = []
    for variation in variation_ids:
        trials = exposures.get(variation, 0)
        successes = conversions.get(variation, 0) if event is not None else None
        rate = interval = test = None
        if successes is not None and trials:
            rate = successes / trials
            interval = statistics.wilson_interval(successes, trials)
            if variation != control:
                test = statistics.two_proportion_z_test(
                    conversions.get(control, 0), exposures.get(control, 0), successes, trials
                )
        results.append(
            VariationResult(
                variation=variation,
                exposures=trials,
                conversions=successes,
                rate=rate,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                z=test.z if test else None,
                p_value=test.p_value if test else None,
                significant=(test.p_value < statistics.SIGNIFICANCE_LEVEL) if test else None,
            )
        )
    sample_ratio = None
    weights = rollout_weights(effective_fallthrough(state_document(view.state), utcnow()))
    if weights is not None:
        tested = statistics.sample_ratio_test(exposures, weights)
        if tested is not None:
            sample_ratio = SampleRatio(
                expected_weights=weights,
                chi_square=tested.chi_square,
                p_value=tested.p_value,
                warning=tested.is_mismatch,
            )
    return ExperimentResults(environment_key, key, event, control, results, sample_ratio)

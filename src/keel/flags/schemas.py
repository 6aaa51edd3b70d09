"""Wire models of the flags API (``/flags/v1/...``).

Flag and segment documents follow the shared model of :mod:`keel_client.flags`; their
nested parts (rules, clauses, rollouts, schedules) are checked by the engine's
``validate_flag`` / ``validate_segment``, not repeated here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Events one batch of ``POST /flags/v1/events`` holds at most.
MAX_EVENTS_PER_BATCH = 1000
#: Keys evaluated by one ``POST /flags/v1/evaluate`` at most (``null``: all flags).
MAX_EVALUATED_KEYS = 1000
MAX_EVALUATED_CONTEXTS = 1000


class FlagType(StrEnum):
    boolean = "boolean"
    string = "string"
    number = "number"
    json = "json"


# -- environments ---------------------------------------------------------------------------


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=63, examples=["production"])
    description: str = Field(default="", max_length=2000)


class EnvironmentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(max_length=2000)


class Environment(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    description: str
    #: The snapshot's version: bumped by every change of the environment's flags.
    version: int
    created_at: datetime
    updated_at: datetime


# -- flag definitions -----------------------------------------------------------------------


class FlagCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=128, examples=["checkout-v2"])
    description: str = Field(default="", max_length=2000)
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    owner: str = Field(default="", max_length=200)
    type: FlagType = FlagType.boolean
    #: ``[{"id", "value"}]``; default for a boolean flag: ``on`` (true) and ``off`` (false).
    variations: list[dict[str, Any]] | None = Field(default=None, max_length=100)
    #: The bucketing salt (default: the key).
    salt: str | None = Field(default=None, max_length=200)
    experiment: bool = False


class Flag(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    description: str
    tags: list[str]
    owner: str
    type: str
    variations: list[dict[str, Any]]
    salt: str
    experiment: bool
    version: int
    archived: bool
    created_at: datetime
    updated_at: datetime


# -- per-environment state ------------------------------------------------------------------


class FlagStateWrite(BaseModel):
    """``PUT``: the whole state of a flag in an environment."""

    model_config = ConfigDict(extra="forbid")

    on: bool = False
    off_variation: str | None = None
    prerequisites: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    targets: list[dict[str, Any]] = Field(default_factory=list, max_length=100)
    rules: list[dict[str, Any]] = Field(default_factory=list, max_length=500)
    fallthrough: dict[str, Any]
    schedule: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    comment: str = Field(default="", max_length=2000)


class FlagState(BaseModel):
    environment: str
    key: str
    #: The state's own version: its ETag, checked by ``If-Match``.
    version: int
    on: bool
    off_variation: str | None
    prerequisites: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    fallthrough: dict[str, Any]
    schedule: list[dict[str, Any]]
    updated_at: datetime


class Toggle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on: bool
    comment: str = Field(default="", max_length=2000)


# -- segments -------------------------------------------------------------------------------


class SegmentWrite(BaseModel):
    """``PUT``: the whole segment (``POST`` adds its ``key``)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=2000)
    included: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=10_000
    )
    excluded: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=10_000
    )
    rules: list[dict[str, Any]] = Field(default_factory=list, max_length=500)


class SegmentCreate(SegmentWrite):
    key: str = Field(max_length=128, examples=["beta-testers"])


class Segment(BaseModel):
    environment: str
    key: str
    description: str
    included: list[str]
    excluded: list[str]
    rules: list[dict[str, Any]]
    version: int
    created_at: datetime
    updated_at: datetime


# -- evaluation -----------------------------------------------------------------------------


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = Field(max_length=63)
    #: At least ``key`` (a string); ``kind`` defaults to ``user``.
    context: dict[str, Any] | None = None
    #: Instead of ``context``: up to 1000 contexts evaluated on the same snapshot, answered in
    #: ``results`` in the same order.
    contexts: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=MAX_EVALUATED_CONTEXTS
    )
    #: The flags to evaluate (``null``: every flag of the environment).
    flags: list[Annotated[str, Field(max_length=128)]] | None = Field(
        default=None, max_length=MAX_EVALUATED_KEYS
    )

    @model_validator(mode="after")
    def _one_of_context_and_contexts(self) -> EvaluateRequest:
        if (self.context is None) == (self.contexts is None):
            raise ValueError("give either context or contexts")
        return self


class EvaluationDetail(BaseModel):
    value: Any
    variation: str | None
    reason: dict[str, Any]


class EvaluateResponse(BaseModel):
    environment: str
    #: The snapshot version evaluated.
    version: int
    #: For ``context``: each flag's evaluation.
    flags: dict[str, EvaluationDetail] | None = None
    #: For ``contexts``: one such map per context, in order.
    results: list[dict[str, EvaluationDetail]] | None = None


# -- SDK events -----------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: When it happened (aware; at most 7 days old, at most 5 minutes ahead).
    time: datetime


class ExposureEvent(_Event):
    kind: Literal["exposure"]
    flag: str = Field(max_length=128)
    variation: str = Field(max_length=128)
    context_key: str = Field(min_length=1, max_length=512)


class TrackEvent(_Event):
    kind: Literal["track"]
    event: str = Field(min_length=1, max_length=200)
    value: float | None = Field(default=None, allow_inf_nan=False)
    context_key: str = Field(min_length=1, max_length=512)


class SummaryEvent(_Event):
    """``count`` evaluations of ``flag`` by an SDK, the last one at ``time``."""

    kind: Literal["summary"]
    flag: str = Field(max_length=128)
    count: int = Field(ge=1)


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = Field(max_length=63)
    events: list[
        Annotated[ExposureEvent | TrackEvent | SummaryEvent, Field(discriminator="kind")]
    ] = Field(max_length=MAX_EVENTS_PER_BATCH)


class EventsAccepted(BaseModel):
    accepted: int
    #: Exposures and summaries of flags (or variations) the environment does not have.
    ignored: int


# -- experiments and governance -------------------------------------------------------------


class VariationResult(BaseModel):
    variation: str
    #: Distinct contexts exposed to the variation.
    exposures: int
    #: Distinct exposed contexts that sent the event after their first exposure (``null``
    #: without ``?event=``).
    conversions: int | None
    rate: float | None
    #: The 95 % Wilson score interval of the rate.
    ci_low: float | None
    ci_high: float | None
    #: Two-proportion z-test against the control (the first variation); ``null`` for it.
    z: float | None
    p_value: float | None
    significant: bool | None


class SampleRatio(BaseModel):
    #: The fallthrough rollout's weights (units of 1/100 000) the exposures are tested against.
    expected_weights: dict[str, int]
    chi_square: float
    p_value: float
    #: ``p < 0.001``: the split is not what the rollout says; do not trust the results.
    warning: bool


class ExperimentResults(BaseModel):
    environment: str
    flag: str
    event: str | None
    control: str
    variations: list[VariationResult]
    #: ``null`` when the flag's fallthrough is no rollout, or nothing was exposed.
    sample_ratio: SampleRatio | None


class StaleFlag(BaseModel):
    key: str
    #: ``not-evaluated`` and/or ``fully-rolled-out``.
    reasons: list[str]
    last_evaluated_at: datetime | None
    #: The one variation everybody gets, for ``fully-rolled-out``.
    serving: str | None


class StaleReport(BaseModel):
    environment: str
    days: int
    flags: list[StaleFlag]

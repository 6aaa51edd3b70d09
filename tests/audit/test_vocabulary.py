"""One wire vocabulary: Keel's audit API accepts exactly the events the SDK lets a service
record, because both take the outcomes, sensitivities, name patterns and limits from
``keel_client.audit``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import keel.core.audit
from keel.audit import schemas
from keel_client.audit import (
    FIELD_LIMITS,
    MAX_BATCH_SIZE,
    MAX_DATA_DEPTH,
    MAX_SAFE_INTEGER,
    EventActor,
    EventTarget,
    Outcome,
    Sensitivity,
    build_event,
)

ACTION = "shop.order.place"


def test_the_recorder_uses_the_sdks_outcomes_and_sensitivities() -> None:
    assert keel.core.audit.Outcome is Outcome
    assert keel.core.audit.Sensitivity is Sensitivity


def _sdk_fields(name: str, text: str) -> dict[str, Any]:
    """Keyword arguments of ``build_event`` setting the field ``name`` (``actor.id``...)."""
    part, _, key = name.partition(".")
    if part == "actor":
        return {"actor": EventActor(**{key: text})}
    if part == "target":
        return {"target": EventTarget(**{key: text})}
    return {name: text}


def _wire_event(name: str, text: str) -> dict[str, Any]:
    """The event on the wire with the field ``name`` set, as a client without checks sends it."""
    part, _, key = name.partition(".")
    return {"action": ACTION, part: {key: text} if key else text}


def _sdk_accepts(**fields: Any) -> bool:
    try:
        build_event(ACTION, **fields)
    except (ValueError, TypeError):
        return False
    return True


def _api_accepts(event: dict[str, Any]) -> bool:
    try:
        schemas.EventIn.model_validate(event)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(FIELD_LIMITS))
def test_a_field_at_its_limit_is_taken_by_both_and_one_longer_by_neither(name: str) -> None:
    for length, accepted in ((FIELD_LIMITS[name], True), (FIELD_LIMITS[name] + 1, False)):
        assert _sdk_accepts(**_sdk_fields(name, "x" * length)) is accepted
        assert _api_accepts(_wire_event(name, "x" * length)) is accepted


@pytest.mark.parametrize("action", ["a.b.c", "shop.order.place", "a_1.b_2.c_3"])
def test_an_action_name_the_sdk_takes_the_api_takes(action: str) -> None:
    schemas.EventIn.model_validate(build_event(action))


@pytest.mark.parametrize("action", ["a.b", "A.b.c", "a.b.c.d", "1a.b.c", "a." * 2 + "c" * 41])
def test_an_action_name_the_sdk_refuses_the_api_refuses(action: str) -> None:
    with pytest.raises(ValueError, match=r"service\.resource\.verb"):
        build_event(action)
    with pytest.raises(ValidationError):
        schemas.EventIn.model_validate({"action": action})


def test_data_limits_are_the_same_on_both_sides() -> None:
    deep: dict[str, Any] = {}
    for _ in range(MAX_DATA_DEPTH + 1):
        deep = {"x": deep}
    for data, accepted in (
        ({"n": MAX_SAFE_INTEGER}, True),
        ({"n": MAX_SAFE_INTEGER + 1}, False),
        (deep, False),
    ):
        assert _sdk_accepts(data=data) is accepted
        assert _api_accepts({"action": ACTION, "data": data}) is accepted


def test_every_outcome_and_sensitivity_the_sdk_sends_the_api_takes() -> None:
    for outcome in Outcome:
        for sensitivity in Sensitivity:
            event = build_event(ACTION, outcome=outcome, sensitivity=sensitivity)
            parsed = schemas.EventIn.model_validate(event)
            assert (parsed.outcome, parsed.sensitivity) == (outcome, sensitivity)


def test_a_batch_holds_as_many_events_as_the_sdk_sends_at_most() -> None:
    event = {"action": ACTION}
    schemas.EventBatch.model_validate({"events": [event] * MAX_BATCH_SIZE})
    with pytest.raises(ValidationError):
        schemas.EventBatch.model_validate({"events": [event] * (MAX_BATCH_SIZE + 1)})

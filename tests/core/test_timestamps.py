"""Times a client sends: with an offset, in UTC, and refused (not a 500) where UTC has none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from keel.core.timestamps import UTCTimestamp, aware_to_utc, to_utc

PLUS_ONE = timezone(timedelta(hours=1))
MINUS_ONE = timezone(timedelta(hours=-1))


class Window(BaseModel):
    until: UTCTimestamp


def test_an_aware_time_is_moved_to_utc() -> None:
    moment = datetime(2026, 3, 14, 10, 0, tzinfo=PLUS_ONE)
    assert to_utc(moment) == datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    assert to_utc(moment).tzinfo is UTC


@pytest.mark.parametrize(
    "moment",
    [datetime(1, 1, 1, tzinfo=PLUS_ONE), datetime(9999, 12, 31, 23, 59, 59, tzinfo=MINUS_ONE)],
)
def test_a_time_utc_cannot_hold_is_a_value_error(moment: datetime) -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_utc(moment)


def test_the_edges_utc_can_hold_pass() -> None:
    assert to_utc(datetime(1, 1, 1, tzinfo=UTC)).year == 1
    assert to_utc(datetime(9999, 12, 31, 23, 59, tzinfo=UTC)).year == 9999


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="offset"):
        aware_to_utc(datetime(2026, 3, 14))


def test_as_a_field_it_validates_to_utc_or_names_the_problem() -> None:
    assert Window(until="2026-03-14T10:00:00+01:00").until == datetime(  # type: ignore[arg-type]
        2026, 3, 14, 9, tzinfo=UTC
    )
    for text, fragment in (
        ("2026-03-14T10:00:00", "offset"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
    ):
        with pytest.raises(ValidationError, match=fragment):
            Window(until=text)  # type: ignore[arg-type]

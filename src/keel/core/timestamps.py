"""Times a client sends: given with their offset, kept and compared in UTC.

A time with an offset can lie outside what Python's ``datetime`` (and so every column and
comparison of Keel's) holds once it is moved to UTC: ``0001-01-01T00:00:00+01:00`` is a moment
of year 0, ``9999-12-31T23:59:59-01:00`` one of year 10000. Converting either raises
``OverflowError`` wherever it first happens (a validator, a bound query parameter), a 500.
:func:`to_utc` turns that into a ``ValueError``, which a pydantic validator reports as a 422
naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

OUT_OF_RANGE = "the time is out of range once converted to UTC (years 1 to 9999)"
NO_OFFSET = "give the time with its offset (RFC 3339), e.g. ...Z"


def to_utc(moment: datetime) -> datetime:
    """``moment`` (timezone-aware) in UTC; ``ValueError`` when UTC cannot represent it."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(OUT_OF_RANGE) from None


def aware_to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; ``ValueError`` when it has no offset or UTC cannot represent it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(NO_OFFSET)
    return to_utc(moment)


#: A request field holding a time: refused without an offset or out of range, else in UTC.
UTCTimestamp = Annotated[datetime, AfterValidator(aware_to_utc)]
